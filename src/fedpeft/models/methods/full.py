"""Full fine-tuning (``peft.method=full``): no adapter; every weight of the model trains and travels, and
the result is saved as a whole transformers model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedpeft.models.methods.base import METHODS, PeftMethod, SharedSettings

if TYPE_CHECKING:
    import torch


@METHODS.register("full")
class Full(PeftMethod):
    """Every weight trains and travels (no adapter; saved as a whole model)."""

    trains_everything = True

    @classmethod
    def apply(cls, model: torch.nn.Module, settings: Any, shared: SharedSettings, head: str) -> torch.nn.Module:
        for p in model.parameters():
            p.requires_grad_(True)
        return model
