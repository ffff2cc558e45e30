"""Compatibility names for what lived here before PEFT methods became a registry: applying and saving a
method is :mod:`fedpeft.models.methods` (one module per method), the in-place LoRA layer operations are
:mod:`fedpeft.models.lora_layers`, gradient checkpointing is :mod:`fedpeft.models.base`. The method lists
are derived from the registry."""

from __future__ import annotations

from fedpeft.models.base import enable_gradient_checkpointing
from fedpeft.models.lora_layers import (
    lora_layer_name,
    lora_layers,
    lora_scaling,
    merge_into_base,
    merge_pairs,
    reset_lora,
    save_stacked_lora,
    scaled_lora,
)
from fedpeft.models.methods import (
    HEAD_MODULES,
    METHODS,
    PEFT_METHODS,
    PEFT_TASK_TYPES,
    PROMPT_METHODS,
    PeftSpec,
    apply_peft,
    save_trained,
)
from fedpeft.models.methods.targets import AUTO_TARGETS, resolve_target_modules

__all__ = [
    "AUTO_TARGETS",
    "HEAD_MODULES",
    "METHODS",
    "PEFT_METHODS",
    "PEFT_TASK_TYPES",
    "PROMPT_METHODS",
    "PeftSpec",
    "apply_peft",
    "enable_gradient_checkpointing",
    "lora_layer_name",
    "lora_layers",
    "lora_scaling",
    "merge_into_base",
    "merge_pairs",
    "reset_lora",
    "resolve_target_modules",
    "save_stacked_lora",
    "save_trained",
    "scaled_lora",
]
