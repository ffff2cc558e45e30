"""Memory and speed options of local training: packing, mixed precision, quantised bases, device placement.
Each is checked against the plain path it must reproduce (or approximate), and misuse is a config error."""

from __future__ import annotations

import pytest
import torch

from fedpeft.config import ConfigError
from fedpeft.experiment.run import run_experiment, setup
from fedpeft.models.base import ModelLoadError, load_base_model, resolve_device
from fedpeft.models.heads import check_packing_isolates

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
    for key in a.state:
        # Summation order differs (rows of different widths); Adam's normalisation magnifies it on tiny gradients.
        torch.testing.assert_close(a.state[key], b.state[key], rtol=1e-3, atol=1e-5)


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


def test_a_quantised_lora_run_federates_end_to_end(micro_config):
    run_dir, summary = run_experiment(micro_config("model.quantization=4bit"), quiet=True)
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
