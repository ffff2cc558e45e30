"""Every PEFT method through a real client round on the micro model: only the method's tensors train and
travel, the frozen base is bit-identical afterwards, and the saved result reloads with the method's own
library (peft, or transformers for full fine-tuning) with identical logits."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from fedpeft.config import ConfigError
from fedpeft.data.text_tasks import TASK_HEADS, TASK_NUM_LABELS
from fedpeft.experiment.run import run_experiment, setup
from fedpeft.experiment.setup import peft_spec
from fedpeft.models.base import load_base_model
from fedpeft.models.bottleneck import BOTTLENECK_KINDS, load_bottleneck
from fedpeft.models.peft_methods import save_trained
from fedpeft.models.state import set_trainable_state
from fedpeft.seeding import torch_rng_scope
from fedpeft.tensors import payload_bytes
from fedpeft.tensors.batching import collate_causal_lm, collate_classification

METHODS = [
    ("lora", []),
    ("lora", ["peft.use_rslora=true"]),
    ("lora", ["peft.use_dora=true"]),
    ("ia3", []),
    ("prompt", ["peft.num_virtual_tokens=4"]),
    ("ptuning", ["peft.num_virtual_tokens=4"]),
    ("prefix", ["peft.num_virtual_tokens=4"]),
    ("adapter_h", ["peft.bottleneck_size=8"]),
    ("adapter_p", ["peft.bottleneck_size=8", "peft.bottleneck_activation=relu"]),
    ("parallel", ["peft.bottleneck_size=8"]),
    ("full", []),
]


def logits(model, examples, pad_id, task):
    collate = collate_classification if task == "defect" else collate_causal_lm
    batch = collate(examples, pad_id, mask_prompt=True)
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


QUANTISABLE = "model.name=builtin:micro64"

CASES = (
    [("instruction", m, e) for m, e in METHODS]
    + [("defect", m, e) for m, e in METHODS if m in ("ia3", "prompt", "adapter_h", "full") or "peft.use_dora=true" in e]
    # a classification head (modules_to_save) with each kind of method; then quantised bases (bitsandbytes'
    # CPU backend, on micro64 whose layers fit 4-bit CPU kernels): QLoRA, LoRA on LLM.int8, a bottleneck
    # adapter and prompt tuning on a 4-bit base
    + [
        ("instruction", "lora", [QUANTISABLE, "model.quantization=4bit"]),
        ("instruction", "lora", [QUANTISABLE, "model.quantization=8bit"]),
        ("instruction", "adapter_h", [QUANTISABLE, "model.quantization=4bit", "peft.bottleneck_size=8"]),
        ("instruction", "prompt", [QUANTISABLE, "model.quantization=4bit", "peft.num_virtual_tokens=4"]),
        ("defect", "lora", [QUANTISABLE, "model.quantization=4bit"]),
    ]
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "method", "extra"), CASES, ids=lambda v: v if isinstance(v, str) else "-".join(v) or ""
)
def test_method_trains_only_its_tensors_and_reloads_with_its_library(micro_config, tmp_path, method, extra, task):
    config = micro_config(f"peft.method={method}", f"data.task={task}", "peft.target_modules=auto", *extra)
    state = setup(config, tmp_path)
    frozen = {n: p.detach().clone() for n, p in state.model.named_parameters() if not p.requires_grad}
    trainable = {n: p for n, p in state.model.named_parameters() if p.requires_grad}
    assert (not frozen) == (method == "full")
    if config.model.quantization != "none":  # the base's linear layers really are bitsandbytes layers
        kinds = {type(m).__name__ for m in state.model.modules()}
        assert {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}[config.model.quantization] in kinds

    (update,) = state.runtime.train_round(1, [0], state.global_state)
    # The payload is exactly the trainable tensors, and training changed them.
    assert update.state.keys() == trainable.keys()
    assert payload_bytes(update.state) == sum(p.numel() * p.element_size() for p in trainable.values())
    assert any(not torch.equal(update.state[k], state.global_state[k]) for k in trainable)
    for name, before in frozen.items():
        assert torch.equal(dict(state.model.named_parameters())[name], before), name

    set_trainable_state(state.model, update.state)
    pad = state.tokenizer.pad_token_id
    examples = state.data.test[:3]
    expected = logits(state.model, examples, pad, task)
    save_trained(state.model, tmp_path / "saved", peft_spec(config))

    head = TASK_HEADS[task]
    if method == "full":
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = AutoModelForSequenceClassification if task == "defect" else AutoModelForCausalLM
        reloaded = auto.from_pretrained(tmp_path / "saved")
    else:
        with torch_rng_scope(0, "init", 1):
            base = load_base_model(
                config.model.name, "float32", head, TASK_NUM_LABELS.get(task, 2), quantization=config.model.quantization
            ).model
        if method in BOTTLENECK_KINDS:
            reloaded = load_bottleneck(base, tmp_path / "saved")
        else:
            reloaded = PeftModel.from_pretrained(base, str(tmp_path / "saved"))
    torch.testing.assert_close(logits(reloaded, examples, pad, task), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ia3", "prompt", "adapter_p", "full"])
def test_other_methods_run_federated_end_to_end(micro_config, method):
    run_dir, summary = run_experiment(micro_config(f"peft.method={method}", "peft.target_modules=auto"), quiet=True)
    assert summary["status"] == "completed" and summary["bytes_up"] > 0
    assert (run_dir / "adapter").is_dir()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["peft.method=adapterx"], "peft.method"),
        (["peft.method=ia3", "peft.client_ranks=[2]"], "peft.method=ia3 has none"),
        (["peft.method=prompt", "fl.lora_aggregation=product"], "needs LoRA adapters"),
        (["peft.method=ia3", "peft.target_modules=[nope]"], "not found in 'llama'"),
    ],
)
def test_method_misconfigurations_are_config_errors(micro_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(micro_config(*overrides), quiet=True)
    assert not (tmp_path / "runs").exists()


def test_transport_dtype_rounds_what_travels_and_counts_its_bytes(micro_config, tmp_path):
    from fedpeft.tensors import through_transport

    native_dir, native = run_experiment(micro_config(), quiet=True)
    f32_dir, f32 = run_experiment(micro_config("fl.transport_dtype=float32"), quiet=True)
    _, bf16 = run_experiment(micro_config("fl.transport_dtype=bfloat16"), quiet=True)
    assert native["bytes_up"] == f32["bytes_up"] == 2 * bf16["bytes_up"]
    assert native["bytes_down"] == 2 * bf16["bytes_down"]
    a = (native_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == (f32_dir / "adapter" / "adapter_model.safetensors").read_bytes()  # float32 adapters: a no-op

    state = setup(micro_config("fl.transport_dtype=float16"), tmp_path)
    (update,) = state.runtime.train_round(1, [0], state.global_state)
    for key, value in update.state.items():  # what the server receives is exactly float16-representable
        assert torch.equal(value, value.half().float()), key
    rounded = through_transport(state.global_state, torch.float16)
    assert any(not torch.equal(rounded[k], state.global_state[k]) for k in rounded)
    assert all(rounded[k].dtype == state.global_state[k].dtype for k in rounded)


def test_bottleneck_adapters_on_an_architecture_without_decoder_blocks_name_what_applies():
    from transformers import BertConfig, BertModel

    from fedpeft.models.peft_methods import PeftSpec, apply_peft

    bert = BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ValueError, match="peft.method=adapter_p finds no decoder blocks .* model type 'bert'"):
        apply_peft(bert, PeftSpec("adapter_p"), "embedding")


@pytest.mark.parametrize("method", ["lora", "adapter_h", "full"])
def test_gradient_checkpointing_gives_the_same_client_update(micro_config, tmp_path, method):
    plain = setup(micro_config(f"peft.method={method}"), tmp_path)
    checkpointed = setup(micro_config(f"peft.method={method}", "train.gradient_checkpointing=true"), tmp_path)
    base = checkpointed.model.get_base_model() if hasattr(checkpointed.model, "get_base_model") else checkpointed.model
    assert base.is_gradient_checkpointing
    (a,) = plain.runtime.train_round(1, [0], plain.global_state)
    (b,) = checkpointed.runtime.train_round(1, [0], checkpointed.global_state)
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
    for key in a.state:
        torch.testing.assert_close(a.state[key], b.state[key], rtol=1e-5, atol=1e-6)
