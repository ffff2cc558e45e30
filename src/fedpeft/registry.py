"""One shape for every pluggable part: a named registry, frozen settings dataclasses with help per field,
and settings parsed from a config mapping with errors that name the key.

A leaf module any layer may import. Strategies, PEFT methods, tasks, partitions and runtimes each keep one
:class:`Registry`; a part registers itself with ``@REGISTRY.register("name")`` in its own file (a duplicate
name is an error), and ``describe()`` gives what a ``fedpeft <parts>`` command prints.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, Literal, TypeVar, get_args, get_origin

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The settings of a part that takes none."""


def setting(default: Any, help: str) -> Any:
    """A settings field with its help text (shown by the ``fedpeft <parts>`` commands)."""
    return dataclasses.field(default=default, metadata={"help": help})


def summary_of(obj: Any) -> str:
    """The first line of an object's docstring."""
    return (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]


def describe_settings(settings_cls: type) -> list[tuple[str, Any, str]]:
    """(field, default, help) for each field of a settings dataclass."""
    return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(settings_cls)]


def import_parts(package: str, path: Iterable[str], shared: Iterable[str] = ()) -> None:
    """Import every module of ``package`` (its ``__path__``) but ``shared``, in name order, so each registers
    its part: adding a part is adding its file, and nothing lists the parts by hand."""
    skip = set(shared)
    for module in pkgutil.iter_modules(list(path)):
        if module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")


class Registry(Generic[T]):
    """Parts of one kind by name. ``kind`` names them in errors ("strategy"), ``key`` is the config key that
    chooses one ("fl.strategy")."""

    def __init__(self, kind: str, key: str):
        self.kind = kind
        self.key = key
        self._parts: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register a part under ``name`` (its ``name`` attribute is set when it has one)."""

        def add(part: T) -> T:
            if name in self._parts:
                raise ValueError(f"{self.kind} {name!r} is already registered by {_label(self._parts[name])}")
            if isinstance(part, type):
                part.name = name  # type: ignore[attr-defined]
            self._parts[name] = part
            return part

        return add

    def get(self, name: str) -> T:
        """The part registered as ``name``; a ValueError naming the config key and every valid name if none."""
        if name not in self._parts:
            raise ValueError(f"unknown {self.key} {name!r}; valid: {', '.join(sorted(self._parts))}")
        return self._parts[name]

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._parts))

    def __len__(self) -> int:
        return len(self._parts)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._parts.items())

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order (the order the parts' files are imported in)."""
        return tuple(self._parts)

    def describe(self) -> list[tuple[str, str, list[tuple[str, Any, str]]]]:
        """(name, one-line summary, [(setting, default, help)]) for every part, sorted by name; a part's
        settings are its ``Settings`` dataclass when it has one."""
        rows = []
        for name, part in self.items():
            settings_cls = getattr(part, "Settings", NoSettings)
            rows.append((name, summary_of(part), describe_settings(settings_cls)))
        return rows


def _label(part: Any) -> str:
    return getattr(part, "__qualname__", None) or type(part).__qualname__


def parse_settings(key: str, name: str, kind: str, settings_cls: type, args: Mapping[str, Any]) -> Any:
    """``args`` (the mapping at config key ``key``, e.g. ``fl.strategy_args``) as the settings dataclass of
    the ``kind`` called ``name``; a ValueError names the offending key and what would be valid."""
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise ValueError(f"{key} has {unknown}, which {kind} {name!r} does not take; valid: {valid}")
    hints = typing.get_type_hints(settings_cls)
    values = {}
    for field_name, raw in args.items():
        values[field_name] = _coerce(key, field_name, hints[field_name], raw, f"{kind} {name!r}")
    try:
        return settings_cls(**values)
    except ValueError as err:
        raise ValueError(f"{key} for {name!r}: {err}") from None


def _coerce(key: str, field_name: str, kind: Any, raw: Any, owner: str) -> Any:
    if kind is float and isinstance(raw, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            raw = float(raw)
        except ValueError:
            pass
    if kind is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if kind is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind is bool and isinstance(raw, bool):
        return raw
    if kind is str and isinstance(raw, str):
        return raw
    if get_origin(kind) is Literal:
        if raw not in get_args(kind):
            choices = ", ".join(map(str, get_args(kind)))
            raise ValueError(f"{key}.{field_name}={raw!r} is not one of {choices} ({owner})")
        return raw
    kind_name = getattr(kind, "__name__", str(kind))
    raise ValueError(f"{key}.{field_name}={raw!r} is not a valid {kind_name} ({owner})")
