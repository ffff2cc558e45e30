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


class ConfigError(ValueError):
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
            raise ConfigError(f"recipe file {recipe!r} does not exist")
    else:
        raise ConfigError(
            f"unknown recipe {recipe!r}; valid recipes: {', '.join(sorted(files))} (or a path to a .yaml file)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("recipe", Path(recipe).stem)
    return data


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set ``a.b=c`` pairs into a nested mapping; values are parsed as YAML (numbers, bools, lists, null)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. fl.rounds=3), got {item!r}")
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
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {err}") from err
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


def _explain(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = ".".join(loc)
        if e["type"] == "extra_forbidden":
            section = _section_model(loc[:-1])
            valid = ", ".join(f.alias or n for n, f in section.model_fields.items()) if section else "?"
            where = ".".join(loc[:-1]) or "top level"
            lines.append(f"unknown key {key!r}; valid keys in {where}: {valid}")
        elif e["type"] == "literal_error":
            lines.append(f"{key}: {e['msg'].replace('Input should be', 'must be')}, got {e['input']!r}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            shown = "" if "got" in msg or isinstance(e["input"], dict) else f" (got {e['input']!r})"
            lines.append(f"{key}: {msg}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def validate_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err)) from None


def load_config(recipe: str = "default", overrides: Sequence[str] = ()) -> RunConfig:
    """Recipe + overrides -> a validated configuration."""
    return validate_config(apply_overrides(read_recipe(recipe), overrides))


def load_run_config(path: Path) -> RunConfig:
    """The resolved config a run directory was started with."""
    if not path.exists():
        raise ConfigError(f"{path} does not exist: is this a fedpeft run directory?")
    return validate_config(yaml.safe_load(path.read_text()))


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
