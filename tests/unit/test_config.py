import pytest
import yaml

from fedpeft.config import ConfigError, list_recipes, load_config
from fedpeft.config.recipes import dump_config, load_run_config


@pytest.mark.parametrize("recipe", sorted(list_recipes()))
def test_every_shipped_recipe_validates_and_round_trips(recipe, tmp_path):
    config = load_config(recipe)
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(config))
    assert load_run_config(path) == config


def test_overrides_parse_yaml_values():
    c = load_config(
        "default", ["fl.rounds=3", "peft.target_modules=[q_proj, k_proj]", "train.max_grad_norm=null", "train.lr=1e-3"]
    )
    assert c.fl.rounds == 3
    assert c.peft.target_modules == ["q_proj", "k_proj"]
    assert c.train.max_grad_norm is None
    assert c.train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "fl.bogus=1",
            "unknown key 'fl.bogus'; valid keys in fl: clients, rounds, fraction, strategy, strategy_args, "
            "lora_aggregation, transport_dtype, seed",
        ),
        ("nosuch.x=1", "unknown key 'nosuch'; valid keys in top level: recipe, model, peft"),
        ("fl.fraction=0", "fl.fraction: must be in (0, 1], got 0.0"),
        ("fl.fraction=1.5", "fl.fraction: must be in (0, 1], got 1.5"),
        ("fl.clients=0", "fl.clients: must be at least 1, got 0"),
        ("peft.r=0", "peft.r: must be a positive integer, got 0"),
        ("peft.r=-4", "peft.r: must be a positive integer, got -4"),
        ("train.schedule=step", "train.schedule: must be 'constant', 'linear' or 'cosine', got 'step'"),
        ("train.micro_batch_size=3", "must be a multiple of train.micro_batch_size (3)"),
        ("train.warmup_ratio=1.0", "train.warmup_ratio"),
    ],
)
def test_bad_values_name_the_key_and_what_is_valid(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("default", [override])
    assert message in str(err.value)


def test_unknown_recipe_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown recipe 'nope'; valid recipes: .*default"):
        load_config("nope")


def test_missing_recipe_file_and_malformed_set():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config("default", ["fl.rounds"])


def test_recipe_file_path_works(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"fl": {"clients": 3}}))
    c = load_config(str(path))
    assert c.fl.clients == 3 and c.recipe == "mine"
