"""Memory and speed options of local training: packing, mixed precision, quantised bases, device placement.
Each is checked against the plain path it must reproduce (or approximate), and misuse is a config error."""

from __future__ import annotations

import pytest
import torch

from fedpeft.config import ConfigError
from fedpeft.experiment.run import run_experiment, setup
from fedpeft.models.base import ModelLoadError, load_base_model, resolve_device
from fedpeft.models.heads import check_packing_isolates
from fedpeft.models.state import set_trainable_state
from tests.integration.conftest import assert_updates_agree

# No dropout: packed and padded batches have different shapes, so their dropout masks would differ.
EXACT = ["peft.dropout=0.0", "train.micro_batch_size=4", "train.batch_size=4"]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_packing_gives_the_padded_client_update(micro_config, tmp_path, method):
    padded = setup(micro_config(*EXACT, f"peft.method={method}"), tmp_path)
    packed = setup(micro_config(*EXACT, f"peft.method={method}", "train.packing=true"), tmp_path)
    assert packed.runtime.args.pack_capacity == 256
    (a,) = padded.runtime.train_round(1, [0], padded.global_state)
    (b,) = packed.runtime.train_round(1, [0], packed.global_state)
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
    # Summation order differs (rows of different widths); Adam's normalisation magnifies it on tiny gradients.
    assert_updates_agree(a.state, b.state, lr=padded.runtime.args.lr, steps=a.num_steps)


def test_packing_on_gpt2_isolates_documents(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()
    check_packing_isolates(model, pad_id=0)  # passes: GPT-2 builds its mask from the position ids


def test_a_model_that_ignores_position_ids_is_refused_for_packing():
    base = load_base_model("builtin:micro").model

    class IgnoresPositions(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.config = base, base.config

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    with pytest.raises(ValueError, match="lets packed documents attend to each other"):
        check_packing_isolates(IgnoresPositions(), pad_id=0)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_computes_in_half_and_keeps_float32_adapters(micro_config, tmp_path, precision):
    exact = setup(micro_config(*EXACT), tmp_path)
    mixed = setup(micro_config(*EXACT, f"train.mixed_precision={precision}"), tmp_path)
    seen = set()
    layer = next(m for n, m in mixed.model.named_modules() if n.endswith("q_proj.base_layer"))
    layer.register_forward_hook(lambda module, inputs, output: seen.add(output.dtype))
    (a,) = exact.runtime.train_round(1, [0], exact.global_state)
    (b,) = mixed.runtime.train_round(1, [0], mixed.global_state)
    assert seen == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert all(t.dtype == torch.float32 for t in b.state.values())
    # Same training, computed in half precision: the loss within half precision's error, the update close.
    assert b.train_loss == pytest.approx(a.train_loss, rel=2e-2)
    delta_a = torch.cat([(a.state[k] - exact.global_state[k]).flatten() for k in a.state])
    delta_b = torch.cat([(b.state[k] - mixed.global_state[k]).flatten() for k in b.state])
    assert torch.nn.functional.cosine_similarity(delta_a, delta_b, dim=0) > 0.9
    # Evaluation runs under the same autocast and agrees with the float32 evaluation closely.
    _, summary = run_experiment(micro_config(*EXACT, f"train.mixed_precision={precision}"), quiet=True)
    _, reference = run_experiment(micro_config(*EXACT), quiet=True)
    assert summary["final_eval"]["loss"] == pytest.approx(reference["final_eval"]["loss"], rel=2e-2)


# builtin:micro's 32-wide layers are refused for 4-bit on the CPU (see below); micro64 is its 64-wide twin.
QUANTISABLE = "model.name=builtin:micro64"


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_a_quantised_lora_run_federates_end_to_end(micro_config, quantization):
    run_dir, summary = run_experiment(micro_config(QUANTISABLE, f"model.quantization={quantization}"), quiet=True)
    assert summary["status"] == "completed" and summary["bytes_up"] > 0
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.quantization=4bit", "peft.method=full"], "stores them as integers"),
        (["model.quantization=8bit", "fl.lora_aggregation=stack"], "merges every round into the base"),
        (["model.quantization=3bit"], "model.quantization"),
        (["train.packing=true", "peft.method=prompt"], "virtual tokens once per row"),
        (["train.packing=true", "data.task=defect"], "scores whole examples"),
        (["train.mixed_precision=fp8"], "train.mixed_precision"),
        (["model.device=banana"], "'banana' is not a device"),
    ],
)
def test_memory_option_misuse_is_a_config_error(micro_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(micro_config(*overrides), quiet=True)
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_says_so():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="sees no CUDA GPU"):
        resolve_device("cuda")


def test_quantisation_without_bitsandbytes_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'fedpeft\[quant\]'"):
        load_base_model("builtin:micro", quantization="4bit")


# NF4's 16 code values (Dettmers et al., QLoRA, appendix E), indexed by the 4-bit code.
NF4 = torch.tensor(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
     -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
     0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
     0.7229568362236023, 1.0]
)  # fmt: skip


def reference_weight(layer: torch.nn.Module) -> torch.Tensor:
    """A quantised layer's weight recomputed from its stored integers with our own arithmetic (no
    bitsandbytes kernel): NF4 codes (high nibble first) times their block's absmax, itself stored as 8-bit
    codes of a second blockwise quantisation (double quantisation); LLM.int8 rows times absmax / 127."""
    import bitsandbytes as bnb

    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear8bitLt):
        return weight.data.float() * weight.SCB.float()[:, None] / 127
    state = weight.quant_state
    rows, cols = state.shape
    packed = weight.data.view(torch.uint8).reshape(-1)
    codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)[: rows * cols].long()
    absmax = state.absmax
    if state.nested:
        inner = state.state2
        scales = inner.absmax.repeat_interleave(inner.blocksize)[: absmax.numel()]
        absmax = inner.code[absmax.long()] * scales + state.offset
    scale = absmax.float().repeat_interleave(state.blocksize)[: rows * cols]
    return (NF4[codes] * scale).reshape(rows, cols)


def quantised_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """bitsandbytes' own layers (peft's LoRA wrappers around them share their class names)."""
    import bitsandbytes as bnb

    return {n: m for n, m in model.named_modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rule is the CPU kernels'")
def test_4bit_on_the_cpu_names_a_layer_off_the_quantisation_block(micro_config):
    with pytest.raises(ModelLoadError, match=r"layer model\.layers\.0\.self_attn\.q_proj has in_features=32") as err:
        load_base_model("builtin:micro", quantization="4bit")
    assert "multiple of the 64-value quantisation block" in str(err.value)
    assert "more" in str(err.value)  # every projection of micro is off the block; the first is named
    load_base_model("builtin:micro", quantization="8bit")  # LLM.int8 has no such rule


@pytest.mark.parametrize("cpu", ["this-cpu", "without-avx512bf16"])
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantised_layers_compute_their_dequantised_weights_through_eval_train_eval(
    micro_config, tmp_path, monkeypatch, quantization, cpu
):
    """Evaluate, train a round, evaluate again (what a client and the server do in turn): every quantised
    layer's output equals x @ W_ref.T + b with W_ref from our own dequantisation, and the second evaluation
    gives the first's logits. ``without-avx512bf16`` makes bitsandbytes believe the CPU lacks the
    instructions, so both kinds of CPU are exercised on whichever machine runs the suite."""
    import bitsandbytes.nn.modules as bnb_modules

    from fedpeft.tensors.batching import collate_causal_lm

    if cpu == "without-avx512bf16":
        # bitsandbytes before 0.48 has no AVX512-BF16 path (nor the function): nothing to switch off there.
        monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: False, raising=False)
    state = setup(micro_config(QUANTISABLE, f"model.quantization={quantization}", "peft.dropout=0.0"), tmp_path)
    layers = quantised_layers(state.model)
    assert layers
    references = {n: reference_weight(m) for n, m in layers.items()}
    seen: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for name, layer in layers.items():
        layer.register_forward_hook(
            lambda module, inputs, output, name=name: seen.append((name, inputs[0].detach(), output.detach()))
        )

    def check_layers() -> None:
        assert seen
        for name, x, y in seen:
            layer = layers[name]
            expected = torch.nn.functional.linear(x.float(), references[name], layer.bias)
            if quantization == "8bit":
                # LLM.int8 quantises each input row to int8 (absmax / 127 per step, half of it at most in
                # rounding) in float16, in inference and, before bitsandbytes' float training path for the CPU,
                # in training: |error| <= sum_k |W_jk| * absmax(x_i) / 254 plus float16's relative 2^-11 on x
                # and y. Twice that bound, below.
                row_max = x.float().abs().amax(dim=-1, keepdim=True)
                bound = row_max * references[name].abs().sum(dim=1) / 127 + expected.abs() * 2**-9 + 1e-4
                assert bool(((y.float() - expected).abs() <= bound).all()), name
            else:  # 4-bit: the weight is dequantised and multiplied in float32, training or not
                torch.testing.assert_close(y.float(), expected, rtol=1e-4, atol=1e-5, msg=name)
        seen.clear()

    batch = collate_causal_lm(state.data.test[:4], state.tokenizer.pad_token_id, mask_prompt=True)

    def evaluate() -> torch.Tensor:
        state.model.eval()
        with torch.no_grad():
            return state.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    before = evaluate()
    check_layers()
    (update,) = state.runtime.train_round(1, [0], state.global_state)
    assert update.train_loss == update.train_loss  # finite: the training pass ran on the same weights
    check_layers()
    set_trainable_state(state.model, state.global_state)
    after = evaluate()
    check_layers()
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not any(
        getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False) for m in layers.values()
    )


def test_a_run_that_quantises_nothing_prints_no_bitsandbytes_warnings():
    """peft imports bitsandbytes, which warns on import about hub kernels fedpeft never uses (AVX512-BF16 CPUs)
    or a CPU-only build (older releases); fedpeft silences both before any library is imported."""
    import subprocess
    import sys

    from fedpeft import SILENCED_LIBRARY_MESSAGES

    code = "import fedpeft.experiment.run, peft, bitsandbytes"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for message in SILENCED_LIBRARY_MESSAGES.values():
        assert message not in result.stderr
