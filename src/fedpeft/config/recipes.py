"""Recipes are YAML files shipped in ``fedpeft/config/recipes``; a run's config is a recipe plus
``--set a.b=c`` overrides, validated into a :class:`RunConfig`.

A recipe may declare, beside its sections:
- ``variants``: named sets of ``dotted.key: value`` overrides, chosen by suffixing the name (``RECIPE@label``,
  several as ``RECIPE@label@offline``). ``offline`` is the variant that maps a recipe's hub model and data to
  the built-in world (``--offline`` on the commands that take a recipe adds it).
- ``compare``: the entries ``fedpeft compare RECIPE`` runs when given none (``strategies: fedavg,...`` or
  ``methods: lora,...``), the seed's own baselines.
- ``extends``: a shipped recipe this one starts from; its sections (and variants) are merged key by key,
  this recipe's values winning (a null removes a key), so a family of recipes (one per task, one per PEFT
  method) states only what differs.
The seed recipes are named ``s<N>-...`` after the systems in SEEDS.md; ``fedpeft recipes`` groups them.
"""

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


SEED_SYSTEMS = {
    "s0": "S0 collaborative software learning: CodeXGLUE tasks on Flower",
    "s1": "S1 FedKD-LoRA: knowledge distillation plus LoRA on GLUE",
    "s2": "S2 Astraios: PEFT methods on a code LLM, judged by execution",
    "s3": "S3 personalised trust-weighted aggregation",
    "s4": "S4 Shepherd / FedIT: federated instruction tuning",
}
"""Recipe name prefix -> the seed system it reproduces (``../shared/SEEDS.md``), for ``fedpeft recipes``."""
RECIPE_META = ("variants", "compare", "extends")
"""Top-level recipe keys that describe the recipe rather than configure a run."""
OFFLINE = "offline"


def list_recipes() -> dict[str, str]:
    """Recipe name -> its one-line description (the YAML's leading comment)."""
    out = {}
    for name, path in sorted(_recipe_files().items()):
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        out[name] = first.lstrip("# ").strip()
    return out


def recipe_groups() -> dict[str, list[tuple[str, str, list[str]]]]:
    """Group title -> (recipe, description, variant names) for every shipped recipe: the seed systems in
    order, then the rest under "fedpeft"."""
    groups: dict[str, list[tuple[str, str, list[str]]]] = {title: [] for title in SEED_SYSTEMS.values()}
    groups["fedpeft's own"] = []
    for name, description in list_recipes().items():
        variants = list(_raw_recipe(name).get("variants") or {})
        title = SEED_SYSTEMS.get(name.split("-", 1)[0], "fedpeft's own")
        groups[title].append((name, description, variants))
    return {title: rows for title, rows in groups.items() if rows}


def with_offline(recipe: str, offline: bool) -> str:
    """``recipe`` with the ``@offline`` variant added when ``offline`` (once)."""
    return recipe if not offline or OFFLINE in recipe.split("@")[1:] else f"{recipe}@{OFFLINE}"


def recipe_compare_entries(recipe: str) -> tuple[str, str] | None:
    """A recipe's own compare entries as (``strategies`` or ``methods``, comma-separated entries), or None."""
    spec = _raw_recipe(recipe.split("@")[0]).get("compare")
    if spec is None:
        return None
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in ("strategies", "methods"):
        raise ConfigError(f"recipe {recipe!r}: compare must be one of {{strategies: ...}} or {{methods: ...}}")
    kind, entries = next(iter(spec.items()))
    return kind, entries if isinstance(entries, str) else ",".join(map(str, entries))


def read_recipe(recipe: str) -> dict[str, Any]:
    """The mapping of a shipped recipe name or a path to a YAML file, with the variants its name selects
    (``NAME@variant@...``) applied and the recipe's own metadata (variants, compare) removed."""
    name, *chosen = recipe.split("@")
    data = _raw_recipe(name)
    declared = data.get("variants") or {}
    for key in RECIPE_META:
        data.pop(key, None)
    if not isinstance(declared, dict):
        raise ConfigError(f"recipe {name!r}: variants must be a mapping of name -> {{key: value}}")
    for variant in chosen:
        if variant not in declared:
            valid = ", ".join(declared) or "none"
            raise ConfigError(f"recipe {name!r} has no variant {variant!r}; its variants: {valid}")
        for key, value in (declared[variant] or {}).items():
            set_key(data, str(key), value)
    data.setdefault("recipe", "@".join([Path(name).stem, *chosen]))
    return data


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged onto ``base``: mappings merge key by key, a null removes the key (so the
    default applies, or a parent's variant is dropped), anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _raw_recipe(recipe: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of a shipped recipe name or a path to a YAML file, merged over the recipe it
    ``extends`` (a shipped recipe name)."""
    data = _recipe_file_mapping(recipe)
    parent = data.get("extends")
    if parent is None:
        return data
    if not isinstance(parent, str) or parent not in _recipe_files():
        raise ConfigError(
            f"recipe {recipe!r}: extends must name a shipped recipe, got {_shown(parent)}; "
            f"valid: {', '.join(sorted(_recipe_files()))}"
        )
    if parent in seen or parent == recipe:
        raise ConfigError(f"recipe {recipe!r}: extends forms a cycle ({' -> '.join([*seen, recipe, parent])})")
    merged = _merged(_raw_recipe(parent, (*seen, recipe)), data)
    if "recipe" not in data:
        merged.pop("recipe", None)  # a child is its own recipe, not its parent's
    return merged


def _recipe_file_mapping(recipe: str) -> dict[str, Any]:
    """The YAML mapping of a shipped recipe name or a path to a YAML file, as written."""
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
    return read_yaml_mapping(path, "recipe")


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
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: cannot parse value {_shown(raw)}: {err}") from None
        set_key(data, key.strip(), value, "--set ")
    return data


def set_key(data: dict[str, Any], key: str, value: Any, where: str = "") -> None:
    """Set ``value`` at dotted ``key`` in a nested mapping, creating sections on the way."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}{key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


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
