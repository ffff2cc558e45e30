"""Every registered PEFT method through one table: its shape (summary, frozen settings with help), its
settings from ``peft.method_args`` and from the older top-level keys, the config round trip, and the errors
that name the key and what is valid. Applying and saving each method is tests/integration/test_method_registry.py."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml

from fedpeft.config import ConfigError, load_config
from fedpeft.config.recipes import dump_config, validate_config
from fedpeft.models.methods import METHODS, PEFT_METHODS, PROMPT_METHODS, PeftMethod, PeftSpec, methods_where
from fedpeft.models.methods.config_keys import LEGACY_KEYS
from fedpeft.registry import summary_of

NAMES = METHODS.names()


def other_value(settings_cls: type, field: dataclasses.Field) -> Any:
    """A valid value of ``field`` that is not its default."""
    kind = typing.get_type_hints(settings_cls)[field.name]
    if get_origin(kind) is Literal:
        return next(v for v in get_args(kind) if v != field.default)
    if kind is bool:
        return not field.default
    if kind is int:
        return field.default + 3
    if kind is float:
        return field.default * 2 + 1
    return f"{field.default}-other"


def non_defaults(method: type[PeftMethod]) -> dict[str, Any]:
    return {f.name: other_value(method.Settings, f) for f in dataclasses.fields(method.Settings)}


def test_the_registry_lists_every_method_found_in_the_package_by_name():
    assert PEFT_METHODS == NAMES
    assert NAMES == ("adapter_h", "adapter_p", "full", "ia3", "lora", "parallel", "prefix", "prompt", "ptuning")
    assert PROMPT_METHODS == methods_where("is_prompt") == ("prefix", "prompt", "ptuning")
    assert methods_where("trains_lora_pairs") == ("lora",) and methods_where("trains_everything") == ("full",)


@pytest.mark.parametrize("name", NAMES)
def test_a_method_has_a_summary_and_frozen_settings_with_help(name):
    method = METHODS.get(name)
    assert method.name == name and summary_of(method)
    assert dataclasses.is_dataclass(method.Settings) and method.Settings.__dataclass_params__.frozen
    for field in dataclasses.fields(method.Settings):
        assert field.metadata.get("help"), f"{name}.{field.name} has no help"
    (row,) = [r for r in METHODS.describe() if r[0] == name]
    assert row[1] == summary_of(method) and [s[0] for s in row[2]] == [
        f.name for f in dataclasses.fields(method.Settings)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_settings_come_from_method_args_and_survive_the_config_round_trip(name, tmp_path):
    method = METHODS.get(name)
    wanted = non_defaults(method)
    config = load_config("default", [f"peft.method={name}", *(f"peft.method_args.{k}={v}" for k, v in wanted.items())])
    assert config.peft.method_settings() == method.Settings(**wanted)
    assert config.peft.method_args == dataclasses.asdict(method.Settings(**wanted))  # resolved: every setting
    dumped = yaml.safe_load(dump_config(config))["peft"]
    assert dumped["method_args"] == config.peft.method_args and not set(dumped) & set(LEGACY_KEYS)
    assert validate_config(yaml.safe_load(dump_config(config))) == config
    assert PeftSpec(name, settings=config.peft.method_settings()).method_settings() == method.Settings(**wanted)


@pytest.mark.parametrize("name", NAMES)
def test_the_older_top_level_keys_set_the_same_settings_and_are_ignored_by_methods_without_them(name):
    method = METHODS.get(name)
    wanted = {k: v for k, v in non_defaults(method).items() if k in LEGACY_KEYS}
    legacy = {
        "use_rslora": True,
        "use_dora": True,
        "num_virtual_tokens": 4,
        "bottleneck_size": 8,
        "bottleneck_activation": "relu",
    }
    legacy |= wanted
    config = load_config("default", [f"peft.method={name}", *(f"peft.{k}={v}" for k, v in legacy.items())])
    taken = {k: v for k, v in legacy.items() if k in config.peft.method_args}
    assert config.peft.method_settings() == method.Settings(**taken)
    assert set(taken) == {f.name for f in dataclasses.fields(method.Settings)} & set(LEGACY_KEYS)
    reloaded = validate_config(yaml.safe_load(dump_config(config)))
    assert reloaded == config and reloaded.peft.method_settings() == config.peft.method_settings()
    # The same keys on PeftSpec (what experiment.run builds today) give the same settings.
    assert PeftSpec(name, **legacy).method_settings() == config.peft.method_settings()
    for key, value in legacy.items():  # read-only views keep the old attribute names
        assert getattr(config.peft, key) == (value if key in taken else getattr(load_config().peft, key))


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_method_args_key_names_the_key_and_the_valid_ones(name):
    valid = ", ".join(f.name for f in dataclasses.fields(METHODS.get(name).Settings)) or "none"
    with pytest.raises(ConfigError) as err:
        load_config("default", [f"peft.method={name}", "peft.method_args.no_such_setting=1"])
    assert f"peft.method_args has ['no_such_setting'], which PEFT method '{name}' does not take; valid: {valid}" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["peft.method=nope"],
            "peft.method: must be 'adapter_h', 'adapter_p', 'full', 'ia3', 'lora', 'parallel', 'prefix', ",
        ),
        (["peft.method=lora", "peft.method_args.use_dora=3"], "peft.method_args.use_dora=3 is not a valid bool"),
        (
            ["peft.method=prompt", "peft.method_args.num_virtual_tokens=0"],
            "num_virtual_tokens=0 must be greater than 0",
        ),
        (["peft.method=adapter_h", "peft.method_args.bottleneck_activation=x"], "is not one of tanh, relu, gelu"),
        (
            ["peft.method=ia3", "peft.bottleneck_size=0"],
            "bottleneck_size=0 must be greater than 0",
        ),  # checked as before
        (["peft.use_dora=true", "peft.method_args.use_dora=false"], "peft.use_dora=True and peft.method_args.use_dora"),
        (["peft.method=ia3", "peft.client_ranks=[2]"], "peft.client_ranks are LoRA ranks; peft.method=ia3 has none"),
    ],
)
def test_bad_method_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match="invalid configuration") as err:
        load_config("default", overrides)
    assert message in str(err.value)


def test_a_duplicate_method_name_is_refused():
    class Again(PeftMethod):
        """A second lora."""

    with pytest.raises(ValueError, match="PEFT method 'lora' is already registered by LoRA"):
        METHODS.register("lora")(Again)
    assert METHODS.get("lora").__name__ == "LoRA"
