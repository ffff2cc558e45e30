"""Apply a PEFT method to a base model. Only LoRA for now; each later method gets its own builder here
or its own module, selected by ``peft.method``."""

from __future__ import annotations

import torch

PEFT_METHODS = ("lora",)

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


def apply_lora(
    model: torch.nn.Module,
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: list[str] | str,
    head: str = "causal_lm",
) -> torch.nn.Module:
    """Wrap ``model`` in a peft LoRA model. Only the LoRA matrices are trainable, plus, for a
    classification head, the head itself (peft's modules_to_save), which then travels with the adapter."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=resolve_target_modules(model, target_modules),
        task_type=PEFT_TASK_TYPES[head],
    )
    return get_peft_model(model, config)
