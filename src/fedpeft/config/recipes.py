"""Recipes are YAML files shipped in ``fedpeft/config/recipes``; a run's config is a recipe plus
``--set a.b=c`` overrides, validated into a :class:`RunConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fedpeft.config.schema import RunConfig
from fedpeft.errors import FedpeftError


class ConfigError(FedpeftError, ValueError):
    """A configuration problem, reported with the offending key and what would be valid."""


def _recipe_files() -> dict[str, Path]:
    root = resources.files("fedpeft.config") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def list_recipes() -> dict[str, str]:
    """Recipe name -> its one-line description (the YAML's leading comment)."""
    out = {}
    for name, path in sorted(_recipe_files().items()):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        out[name] = first.lstrip("# ").strip()
    return out


def read_recipe(recipe: str) -> dict[str, Any]:
    """The raw mapping of a shipped recipe name or a path to a YAML file."""
    files = _recipe_files()
    if recipe in files:
        path = files[recipe]
    elif recipe.endswith((".yaml", ".yml")):
        path = Path(recipe)
        if not path.exists():
            raise ConfigError(
                f"recipe file {recipe!r} does not exist; valid recipes: {', '.join(sorted(files))} "
                "(or a path to a .yaml file)"
            )
    else:
        raise ConfigError(
            f"unknown recipe {recipe!r}; valid recipes: {', '.join(sorted(files))} (or a path to a .yaml file)"
        )
    data = read_yaml_mapping(path, "recipe")
    data.setdefault("recipe", Path(recipe).stem)
    return data


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """The mapping of sections in a YAML file; anything else (unreadable, not UTF-8, not YAML, empty, not a
    mapping) is a :class:`ConfigError` naming ``what`` and the file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a YAML file") from None
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from None
    if data is None:
        raise ConfigError(f"{what} {path} is empty; it must be a mapping of sections (see `fedpeft config`)")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``a.b=c`` pairs into a nested mapping; values are parsed as YAML (numbers, bools, lists, null)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. fl.rounds=3), got {_shown(item)}")
        parts = key.strip().split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot parse value {_shown(raw)}: {err}") from None
    return data


def _section_model(loc: Sequence[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


MAX_EXPLAINED = 10
"""Validation problems listed one per line; the rest are counted."""
MAX_SHOWN = 80
"""Characters of an offending value or key quoted in a message."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[: MAX_SHOWN - 3]}..."


def _explain(err: ValidationError) -> str:
    lines = []
    problems = err.errors()
    for e in problems[:MAX_EXPLAINED]:
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            section = _section_model(loc[:-1])
            valid = ", ".join(f.alias or n for n, f in section.model_fields.items()) if section else "?"
            where = ".".join(loc[:-1]) or "top level"
            lines.append(f"unknown key {_shown(key)}; valid keys in {where}: {valid}")
        elif e["type"] == "literal_error":
            lines.append(f"{key}: {e['msg'].replace('Input should be', 'must be')}, got {_shown(e['input'])}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            shown = "" if "got" in msg or isinstance(e["input"], dict) else f" (got {_shown(e['input'])})"
            lines.append(f"{key}: {msg}{shown}" if key else f"{msg}{shown}")
    if len(problems) > MAX_EXPLAINED:
        lines.append(f"... and {len(problems) - MAX_EXPLAINED} more")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def validate_config(data: dict[str, Any], where: str = "") -> RunConfig:
    """``data`` as a :class:`RunConfig`; ``where`` (a file) prefixes the error."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{where}: {_explain(err)}" if where else _explain(err)) from None


def load_config(recipe: str = "default", overrides: Sequence[str] = ()) -> RunConfig:
    """Recipe + overrides -> a validated configuration."""
    return validate_config(apply_overrides(read_recipe(recipe), overrides))


def load_run_config(path: Path) -> RunConfig:
    """The resolved config a run directory was started with."""
    if not path.exists():
        raise ConfigError(f"{path} does not exist: is this a fedpeft run directory?")
    return validate_config(read_yaml_mapping(path, "run config"), where=str(path))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
