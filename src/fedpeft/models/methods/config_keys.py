"""``peft.method_args`` from a config: validated against the chosen method's ``Settings`` and resolved to
every setting (what ``config.yaml`` records), plus the five method settings that were top-level ``peft.*``
keys before methods had their own settings.

Compatibility, decided once: recipes, ``--set`` and old run directories may still write ``peft.use_rslora``,
``peft.use_dora``, ``peft.num_virtual_tokens``, ``peft.bottleneck_size`` and ``peft.bottleneck_activation``.
Each is validated as before (a bad value is an error even for a method that does not read it), moved into
``peft.method_args`` when the chosen method takes it and dropped otherwise (as before, ignored). The same key
in both places with different values is an error. A resolved config is dumped with ``method_args`` only, so
it reloads to the same settings. No method added later gets a top-level key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedpeft.models.methods.base import METHODS, PeftMethod, setting_names

LEGACY_KEYS = ("use_rslora", "use_dora", "num_virtual_tokens", "bottleneck_size", "bottleneck_activation")
"""Method settings once top-level ``peft.*`` keys; still accepted, never dumped."""


def resolve_method_args(method: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of ``method`` with ``args`` applied; a ValueError names the offending key."""
    return dataclasses.asdict(METHODS.get(method).parse_args(args))


def owner_of(key: str) -> type[PeftMethod]:
    """The first registered method whose settings have ``key`` (its type and default are the key's)."""
    return next(METHODS.get(n) for n in METHODS.names() if key in setting_names(METHODS.get(n)))


def legacy_default(key: str) -> Any:
    """The default of a legacy key, from the settings of a method that takes it."""
    return next(f.default for f in dataclasses.fields(owner_of(key).Settings) if f.name == key)


def fold_legacy_keys(data: Any, default_method: str) -> Any:
    """The raw ``peft`` section with its legacy keys validated and moved into ``method_args`` (those the
    chosen method takes) or dropped (the others). Anything malformed is left for the schema to report."""
    if not isinstance(data, Mapping) or not any(k in data for k in LEGACY_KEYS):
        return data
    data = dict(data)
    legacy = {k: data.pop(k) for k in LEGACY_KEYS if k in data}
    for key, value in legacy.items():
        owner_of(key).parse_args({key: value}, key="peft")
    method, args = data.get("method", default_method), data.get("method_args", {})
    if not isinstance(method, str) or method not in METHODS or not isinstance(args, Mapping):
        return data
    merged = dict(args)
    takes = setting_names(METHODS.get(method))
    for key in (k for k in legacy if k in takes):
        if key in merged and merged[key] != legacy[key]:
            raise ValueError(
                f"peft.{key}={legacy[key]!r} and peft.method_args.{key}={merged[key]!r} disagree; "
                f"set it once, in peft.method_args"
            )
        merged[key] = legacy[key]
    data["method_args"] = merged
    return data
