"""The shape of a PEFT method (``peft.method``) and the registry every method file registers in.

A method is a class with a one-line docstring (``fedpeft methods`` prints it), a frozen ``Settings``
dataclass whose fields carry their help (``registry.setting``), set from ``peft.method_args``, and two
class methods: ``apply`` wraps a frozen base so that only the method's tensors train, ``save`` writes what
trained in the method's own format. Traits the rest of the run steers by (packing, LoRA aggregation modes,
quantised bases) are class flags, so lists such as "the prompt methods" are derived, never written by hand.

Settings that several methods read (rank, alpha, dropout, target modules) are not a method's own: they stay
top-level ``peft.*`` keys and reach ``apply`` as :class:`SharedSettings`.

Nothing here imports torch or peft at import time: the config schema reads this registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedpeft.registry import NoSettings, Registry, parse_settings

if TYPE_CHECKING:
    import torch

PEFT_TASK_TYPES = {
    "causal_lm": "CAUSAL_LM",
    "seq2seq_lm": "SEQ_2_SEQ_LM",
    "sequence_classification": "SEQ_CLS",
    "embedding": "FEATURE_EXTRACTION",
}
"""peft's task type for each head."""

HEAD_MODULES = ("score",)
"""Task heads a non-peft method trains and saves with its adapters (peft's modules_to_save)."""

METHOD_ARGS_KEY = "peft.method_args"


@dataclass(frozen=True)
class SharedSettings:
    """The ``peft.*`` settings that are not one method's own; each method reads those it needs."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | str = "auto"


class PeftMethod:
    """Base of every PEFT method; a method file subclasses it and registers with ``@METHODS.register(name)``."""

    name: ClassVar[str]
    Settings: ClassVar[type] = NoSettings
    is_prompt: ClassVar[bool] = False
    """Prepends learned virtual tokens (or per-layer prefixes) instead of changing weights: once per row, so
    packed rows would hide them from every document but the first."""
    trains_lora_pairs: ClassVar[bool] = False
    """Its trainable state is LoRA pairs: client ranks, product and stacked aggregation apply."""
    trains_everything: ClassVar[bool] = False
    """Every base weight trains and travels (no adapter): a quantised base cannot be trained."""

    @classmethod
    def apply(cls, model: torch.nn.Module, settings: Any, shared: SharedSettings, head: str) -> torch.nn.Module:
        """``model`` wrapped or changed so that only the method's tensors (and a classification head) train."""
        raise NotImplementedError

    @classmethod
    def save(cls, model: torch.nn.Module, where: Path, settings: Any) -> None:
        """Write what trained into the directory ``where`` (by default the model's own ``save_pretrained``)."""
        model.save_pretrained(where)

    @classmethod
    def parse_args(cls, args: Mapping[str, Any], key: str = METHOD_ARGS_KEY) -> Any:
        """``args`` (the mapping at config key ``key``) as this method's ``Settings``."""
        return parse_settings(key, cls.name, METHODS.kind, cls.Settings, args)


METHODS: Registry[type[PeftMethod]] = Registry("PEFT method", "peft.method")


def method_named(name: str) -> type[PeftMethod]:
    """The method registered as ``name``; a ValueError listing every method (in registration order)."""
    if name not in METHODS:
        raise ValueError(f"unknown peft.method {name!r}; valid: {', '.join(METHODS.names())}")
    return METHODS.get(name)


def setting_names(method: type[PeftMethod]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(method.Settings))


@dataclass(frozen=True)
class PeftSpec:
    """A PEFT method with its settings, as flat arguments (built from ``peft.*`` by the experiment)."""

    method: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] | str = "auto"
    settings: Any = None
    """The method's ``Settings``; None: its defaults, with any of the compatibility fields below."""
    # Compatibility: the method settings that were PeftSpec fields before methods had their own Settings.
    # Unset (None) leaves the method's default; a method that does not take one ignores it.
    use_rslora: bool | None = None
    use_dora: bool | None = None
    num_virtual_tokens: int | None = None
    bottleneck_size: int | None = None
    bottleneck_activation: str | None = None

    @property
    def shared(self) -> SharedSettings:
        return SharedSettings(self.r, self.alpha, self.dropout, self.target_modules)

    def method_settings(self) -> Any:
        """The method's ``Settings``: ``settings`` when given, else its defaults and the compatibility fields."""
        if self.settings is not None:
            return self.settings
        method = method_named(self.method)
        given = {k: getattr(self, k) for k in setting_names(method) if getattr(self, k, None) is not None}
        return method.Settings(**given)
