"""What the three bottleneck-adapter methods (adapter_h, adapter_p, parallel) share: their settings, and
applying and saving them through :mod:`fedpeft.models.bottleneck`, whose kind is the method's name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fedpeft.models.methods.base import HEAD_MODULES, PeftMethod, SharedSettings
from fedpeft.registry import setting

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BottleneckSettings:
    bottleneck_size: int = setting(64, "Bottleneck width (> 0).")
    bottleneck_activation: Literal["tanh", "relu", "gelu"] = setting(
        "tanh", "The bottleneck's non-linearity (S2: tanh)."
    )

    def __post_init__(self) -> None:
        if self.bottleneck_size <= 0:
            raise ValueError(f"bottleneck_size={self.bottleneck_size} must be greater than 0")


class BottleneckMethod(PeftMethod):
    """Bottleneck adapters of the kind named like the method, trained with the frozen base."""

    Settings = BottleneckSettings

    @classmethod
    def apply(cls, model: torch.nn.Module, settings: Any, shared: SharedSettings, head: str) -> torch.nn.Module:
        from fedpeft.models.bottleneck import ADAPTER_NAME, add_bottlenecks

        model.requires_grad_(False)
        add_bottlenecks(model, cls.name, settings.bottleneck_size, settings.bottleneck_activation)
        for name, p in model.named_parameters():
            if f".{ADAPTER_NAME}." in name or (head == "sequence_classification" and name.startswith(HEAD_MODULES)):
                p.requires_grad_(True)
        return model

    @classmethod
    def save(cls, model: torch.nn.Module, where: Path, settings: Any) -> None:
        """A bottleneck adapter directory (:func:`fedpeft.models.bottleneck.load_bottleneck` reloads it)."""
        from fedpeft.models.bottleneck import save_bottleneck

        save_bottleneck(model, where, cls.name, settings.bottleneck_size, settings.bottleneck_activation)
