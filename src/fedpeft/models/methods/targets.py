"""Which modules a weight-adapting method targets (``peft.target_modules``): the names given, checked
against the model, or ``auto``, the architecture's attention projections."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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
    import torch

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
