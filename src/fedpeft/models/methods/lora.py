"""LoRA (``peft.method=lora``): a trained low-rank pair B A beside each target weight, scaled by alpha / r;
optionally rank-stabilised (alpha / sqrt(r)) or DoRA (a trained magnitude per output on top)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedpeft.models.methods.base import METHODS, SharedSettings
from fedpeft.models.methods.peft_library import PeftLibraryMethod
from fedpeft.models.methods.targets import resolve_target_modules
from fedpeft.registry import setting

if TYPE_CHECKING:
    import torch


@METHODS.register("lora")
class LoRA(PeftLibraryMethod):
    """Low-rank pairs B A beside the target weights (peft.r, peft.alpha, peft.dropout, peft.target_modules)."""

    @dataclass(frozen=True)
    class Settings:
        use_rslora: bool = setting(False, "Scale by alpha / sqrt(r) (rank-stabilised LoRA).")
        use_dora: bool = setting(False, "DoRA: a trained magnitude per output on top of LoRA.")

    trains_lora_pairs = True

    @classmethod
    def peft_config(cls, model: torch.nn.Module, settings: Any, shared: SharedSettings, task_type: str) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=shared.r,
            lora_alpha=shared.alpha,
            lora_dropout=shared.dropout,
            target_modules=resolve_target_modules(model, shared.target_modules),
            use_rslora=settings.use_rslora,
            use_dora=settings.use_dora,
            task_type=task_type,
        )
