"""Apply a PEFT method to a base model (``peft.method``): one small builder per peft config, plus full
fine-tuning; and the in-place LoRA layer operations that federated aggregation needs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fedpeft.models.bottleneck import ADAPTER_NAME, BOTTLENECK_KINDS, add_bottlenecks, save_bottleneck

# Attention projections per architecture, used when target_modules is "auto".
AUTO_TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
    "gpt_bigcode": ["c_attn"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "t5": ["q", "v"],
}


def resolve_target_modules(model: torch.nn.Module, target_modules: list[str] | str) -> list[str]:
    model_type = getattr(model.config, "model_type", "?")
    if target_modules == "auto":
        if model_type not in AUTO_TARGETS:
            raise ValueError(
                f"peft.target_modules='auto' has no default for model type {model_type!r} "
                f"(known: {', '.join(sorted(AUTO_TARGETS))}); list the module names explicitly"
            )
        return AUTO_TARGETS[model_type]
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in target_modules if t not in leaf_names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(
            f"peft.target_modules {missing} not found in {model_type!r}; its linear modules are: {', '.join(linear)}"
        )
    return list(target_modules)


PEFT_TASK_TYPES = {
    "causal_lm": "CAUSAL_LM",
    "seq2seq_lm": "SEQ_2_SEQ_LM",
    "sequence_classification": "SEQ_CLS",
    "embedding": "FEATURE_EXTRACTION",
}

PROMPT_METHODS = ("prompt", "ptuning", "prefix")
"""Methods that prepend learned virtual tokens (or per-layer prefixes) instead of changing weights."""


@dataclass(frozen=True)
class PeftSpec:
    """The flat settings of a PEFT method (``peft.*``); each builder reads the fields it needs."""

    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | str = "auto"
    use_rslora: bool = False
    use_dora: bool = False
    num_virtual_tokens: int = 20
    bottleneck_size: int = 64
    bottleneck_activation: str = "tanh"


def _lora_config(model: torch.nn.Module, spec: PeftSpec, task_type: str):
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=resolve_target_modules(model, spec.target_modules),
        use_rslora=spec.use_rslora,
        use_dora=spec.use_dora,
        task_type=task_type,
    )


def _ia3_config(model: torch.nn.Module, spec: PeftSpec, task_type: str):
    from peft import IA3Config
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    model_type = getattr(model.config, "model_type", "?")
    if spec.target_modules == "auto":
        if model_type not in TARGETS:
            raise ValueError(
                f"peft.method=ia3 has no default target modules for model type {model_type!r}; "
                f"list them in peft.target_modules (known types: {', '.join(sorted(TARGETS))})"
            )
        targets, feedforward = TARGETS[model_type], FEEDFORWARD[model_type]
    else:
        targets = resolve_target_modules(model, spec.target_modules)
        mlp_words = ("mlp", "down", "up", "gate", "fc", "wo", "wi", "dense_4h", "c_proj", "output.dense")
        feedforward = [t for t in targets if any(w in t for w in mlp_words)]
    return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=task_type)


def _prompt_config(model: torch.nn.Module, spec: PeftSpec, task_type: str):
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    kinds = {"prompt": PromptTuningConfig, "ptuning": PromptEncoderConfig, "prefix": PrefixTuningConfig}
    return kinds[spec.method](num_virtual_tokens=spec.num_virtual_tokens, task_type=task_type)


PEFT_BUILDERS = {"lora": _lora_config, "ia3": _ia3_config, **dict.fromkeys(PROMPT_METHODS, _prompt_config)}
PEFT_METHODS = (*PEFT_BUILDERS, *BOTTLENECK_KINDS, "full")
HEAD_MODULES = ("score",)
"""Task heads a non-peft method trains and saves with its adapters (peft's modules_to_save)."""


def apply_peft(model: torch.nn.Module, spec: PeftSpec, head: str = "causal_lm") -> torch.nn.Module:
    """Wrap ``model`` for ``spec.method``: a peft model whose only trainable tensors are the method's (plus a
    classification head, peft's modules_to_save, which then travels with the adapter), or, for ``full``, the
    model itself with every weight trainable. A method peft cannot apply to this model is a ValueError
    naming the method, the model type and the head."""
    from peft import get_peft_model

    if spec.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if spec.method in BOTTLENECK_KINDS:
        model.requires_grad_(False)
        add_bottlenecks(model, spec.method, spec.bottleneck_size, spec.bottleneck_activation)
        for name, p in model.named_parameters():
            if f".{ADAPTER_NAME}." in name or (head == "sequence_classification" and name.startswith(HEAD_MODULES)):
                p.requires_grad_(True)
        return model
    if spec.method not in PEFT_BUILDERS:
        raise ValueError(f"unknown peft.method {spec.method!r}; valid: {', '.join(PEFT_METHODS)}")
    model_type = getattr(model.config, "model_type", "?")
    config = PEFT_BUILDERS[spec.method](model, spec, PEFT_TASK_TYPES[head])
    try:
        return get_peft_model(model, config)
    except (ValueError, TypeError, AttributeError, NotImplementedError, KeyError) as err:
        raise ValueError(
            f"peft.method={spec.method} does not apply to model type {model_type!r} with a {head} head ({err}); "
            f"try another of: {', '.join(PEFT_METHODS)}"
        ) from None


# ---- LoRA layers in place: per-client scaling, merging stacked updates into the base, re-initialising ----

_LORA_A, _LORA_B = ".lora_A.", ".lora_B."


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name -> every peft LoRA layer of ``model`` (modules holding ``lora_A``)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "scaling")}


def lora_layer_name(state_key: str) -> str:
    """The module name a LoRA state key (``...q_proj.lora_A.default.weight``) belongs to."""
    marker = _LORA_A if _LORA_A in state_key else _LORA_B
    return state_key.split(marker)[0]


@contextmanager
def scaled_lora(model: torch.nn.Module, factor: float) -> Iterator[None]:
    """Multiply every LoRA layer's scaling (alpha / r) by ``factor`` for the block: a client training a
    rank-r_i adapter inside the global rank-R layer uses alpha / r_i, i.e. factor R / r_i."""
    if factor == 1.0:
        yield
        return
    layers = lora_layers(model).values()
    saved = [dict(layer.scaling) for layer in layers]
    for layer in layers:
        for adapter in layer.scaling:
            layer.scaling[adapter] *= factor
    try:
        yield
    finally:
        for layer, scaling in zip(layers, saved, strict=True):
            layer.scaling.clear()
            layer.scaling.update(scaling)


def lora_scaling(model: torch.nn.Module) -> float:
    """The scaling alpha / r shared by the model's LoRA layers."""
    values = {s for layer in lora_layers(model).values() for s in layer.scaling.values()}
    if len(values) != 1:
        raise ValueError(f"LoRA layers disagree on their scaling: {sorted(values)}")
    return values.pop()


@torch.no_grad()
def merge_into_base(model: torch.nn.Module, layer_name: str, delta: torch.Tensor) -> None:
    """Add ``delta`` (out x in, already scaled) to the frozen base weight under a LoRA layer."""
    layer = model.get_submodule(layer_name)
    weight = layer.get_base_layer().weight
    if getattr(layer, "fan_in_fan_out", False):  # GPT-2's Conv1D stores (in, out)
        delta = delta.T
    if delta.shape != weight.shape:
        raise ValueError(f"{layer_name}: a delta of shape {tuple(delta.shape)} does not fit {tuple(weight.shape)}")
    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))


def reset_lora(model: torch.nn.Module) -> None:
    """Re-initialise every LoRA pair as peft does for a new adapter (A random, B zero); seed it outside."""
    for layer in lora_layers(model).values():
        for adapter in list(layer.lora_A):
            layer.reset_lora_parameters(adapter, True)


def merge_pairs(model: torch.nn.Module, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Add scaling * B A of every stacked pair to the frozen base weight it adapts."""
    scale = lora_scaling(model)
    for a_key, (b, a) in pairs.items():
        merge_into_base(model, lora_layer_name(a_key), scale * (b.to(torch.float64) @ a.to(torch.float64)))


def save_stacked_lora(
    model: torch.nn.Module,
    trainable: dict[str, torch.Tensor],
    merged: list[dict[str, tuple[torch.Tensor, torch.Tensor]]],
    where: Path,
) -> None:
    """Rewrite the adapter that ``model.save_pretrained`` wrote in ``where`` as one LoRA adapter holding every
    merged round of stacked pairs (per pair their concatenation, rank R_total) with lora_alpha = scaling x
    R_total, so that peft's alpha / r is the run's scaling. Loaded on the original base it gives the model
    with every round merged; ``trainable`` supplies the other tensors (a classification head)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    scale = lora_scaling(model)
    tensors = dict(trainable)
    for a_key in merged[0]:
        b_key = a_key.replace(_LORA_A, _LORA_B)
        dtype = trainable[a_key].dtype
        tensors[b_key] = torch.cat([r[a_key][0] for r in merged], dim=1).to(dtype)
        tensors[a_key] = torch.cat([r[a_key][1] for r in merged], dim=0).to(dtype)
    total_rank = tensors[next(iter(merged[0]))].shape[0]
    saved = get_peft_model_state_dict(model, state_dict=tensors)
    save_file({k: v.contiguous() for k, v in saved.items()}, str(where / "adapter_model.safetensors"))
    config_path = where / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(r=total_rank, lora_alpha=scale * total_rank)
    config_path.write_text(json.dumps(config, indent=2))


def save_trained(model: torch.nn.Module, where: Path, spec: PeftSpec) -> None:
    """Write what a run trained in the method's own format: a peft adapter directory, a bottleneck adapter
    directory (:mod:`fedpeft.models.bottleneck`), or a whole transformers model for ``full``."""
    if spec.method in BOTTLENECK_KINDS:
        save_bottleneck(model, where, spec.method, spec.bottleneck_size, spec.bottleneck_activation)
    else:
        model.save_pretrained(where)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward pass (transformers' non-reentrant checkpointing,
    which also replays dropout exactly, so the gradients are those of the plain pass)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(inner, "supports_gradient_checkpointing", False):
        model_type = getattr(getattr(inner, "config", None), "model_type", "?")
        raise ValueError(f"train.gradient_checkpointing: model type {model_type!r} does not support it; set it false")
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
