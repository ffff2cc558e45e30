"""PEFT methods, one module each, registered by name when this package imports every module in it: apply
one to a base model and save what it trained. ``fedpeft methods`` lists them and their settings.

Adding a method is one module here (a :class:`PeftMethod` subclass registered with ``@METHODS.register``);
the config accepts its name and its ``peft.method_args`` from the registry. Nothing lists methods by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpeft.models.methods.base import (
    HEAD_MODULES,
    METHODS,
    PEFT_TASK_TYPES,
    PeftMethod,
    PeftSpec,
    SharedSettings,
    method_named,
)
from fedpeft.registry import import_parts

if TYPE_CHECKING:
    import torch

SHARED_MODULES = ("base", "bottleneck_adapters", "config_keys", "peft_library", "targets", "virtual_tokens")
"""Modules of this package that hold what several methods share; every other module is one method."""
import_parts(__name__, __path__, shared=SHARED_MODULES)

__all__ = [
    "HEAD_MODULES",
    "METHODS",
    "PEFT_METHODS",
    "PEFT_TASK_TYPES",
    "PROMPT_METHODS",
    "PeftMethod",
    "PeftSpec",
    "SharedSettings",
    "apply_peft",
    "method_named",
    "methods_where",
    "save_trained",
]


def methods_where(trait: str) -> tuple[str, ...]:
    """The names of the registered methods whose class flag ``trait`` is set, in registration order."""
    return tuple(name for name in METHODS.names() if getattr(METHODS.get(name), trait))


PEFT_METHODS = METHODS.names()
"""Every registered method."""
PROMPT_METHODS = methods_where("is_prompt")
"""Methods that prepend learned virtual tokens (or per-layer prefixes) instead of changing weights."""


def apply_peft(model: torch.nn.Module, spec: PeftSpec, head: str = "causal_lm") -> torch.nn.Module:
    """Wrap ``model`` for ``spec.method``: a model whose only trainable tensors are the method's (plus a
    classification head, which then travels with the adapter), or, for ``full``, the model itself with every
    weight trainable. A method that cannot apply to this model is a ValueError naming the method, the model
    type and the head."""
    method = method_named(spec.method)
    return method.apply(model, spec.method_settings(), spec.shared, head)


def save_trained(model: torch.nn.Module, where: Path, spec: PeftSpec) -> None:
    """Write what a run trained in the method's own format: a peft adapter directory, a bottleneck adapter
    directory (:mod:`fedpeft.models.bottleneck`), or a whole transformers model for ``full``."""
    method = method_named(spec.method)
    method.save(model, where, spec.method_settings())


def describe_methods() -> list[tuple[str, str, list[tuple[str, Any, str]]]]:
    """(name, summary, [(setting, default, help)]) for every method, as ``fedpeft methods`` prints them."""
    return METHODS.describe()
