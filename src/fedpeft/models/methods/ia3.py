"""IA3 (``peft.method=ia3``): trained vectors that rescale the target modules' activations (the attention
keys and values and the feed-forward input)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedpeft.models.methods.base import METHODS, SharedSettings
from fedpeft.models.methods.peft_library import PeftLibraryMethod
from fedpeft.models.methods.targets import resolve_target_modules

if TYPE_CHECKING:
    import torch

MLP_WORDS = ("mlp", "down", "up", "gate", "fc", "wo", "wi", "dense_4h", "c_proj", "output.dense")
"""Parts of a module name that mark it as feed-forward (IA3 scales its input rather than its output)."""


@METHODS.register("ia3")
class IA3(PeftLibraryMethod):
    """Learned rescaling vectors on the target modules (peft.target_modules; auto: peft's per-architecture)."""

    @classmethod
    def peft_config(cls, model: torch.nn.Module, settings: Any, shared: SharedSettings, task_type: str) -> Any:
        from peft import IA3Config
        from peft.utils.constants import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        )
        from peft.utils.constants import (
            TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
        )

        model_type = getattr(model.config, "model_type", "?")
        if shared.target_modules == "auto":
            if model_type not in TARGETS:
                raise ValueError(
                    f"peft.method=ia3 has no default target modules for model type {model_type!r}; "
                    f"list them in peft.target_modules (known types: {', '.join(sorted(TARGETS))})"
                )
            targets, feedforward = TARGETS[model_type], FEEDFORWARD[model_type]
        else:
            targets = resolve_target_modules(model, shared.target_modules)
            feedforward = [t for t in targets if any(w in t for w in MLP_WORDS)]
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=task_type)
