"""What the three virtual-token methods (prompt, ptuning, prefix) share: their settings and peft's way of
building them from ``num_virtual_tokens``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from fedpeft.models.methods.base import SharedSettings
from fedpeft.models.methods.peft_library import PeftLibraryMethod
from fedpeft.registry import setting

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class VirtualTokenSettings:
    num_virtual_tokens: int = setting(20, "Learned virtual tokens (> 0).")

    def __post_init__(self) -> None:
        if self.num_virtual_tokens <= 0:
            raise ValueError(f"num_virtual_tokens={self.num_virtual_tokens} must be greater than 0")


class VirtualTokenMethod(PeftLibraryMethod):
    """A peft prompt-learning method: ``config_class`` built with the number of virtual tokens."""

    Settings = VirtualTokenSettings
    is_prompt = True
    config_class: ClassVar[str]
    """The peft config class's name."""

    @classmethod
    def peft_config(cls, model: torch.nn.Module, settings: Any, shared: SharedSettings, task_type: str) -> Any:
        import peft

        return getattr(peft, cls.config_class)(num_virtual_tokens=settings.num_virtual_tokens, task_type=task_type)
