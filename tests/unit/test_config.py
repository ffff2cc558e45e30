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


def test_recipe_path_that_is_a_directory_is_a_config_error(tmp_path):
    (tmp_path / "mine.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"mine.yaml is a directory, not a YAML file"):
        load_config(str(tmp_path / "mine.yaml"))


def test_recipe_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_bytes("fl:\n  strategy: fedavg\nrecipe: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"mine.yaml is not UTF-8 text \(byte \d+\); save it as UTF-8"):
        load_config(str(path))


@pytest.mark.parametrize("text", ["", "\n", "# nothing but a comment\n", "---\n", "null\n"])
def test_empty_recipe_file_is_refused_not_read_as_defaults(tmp_path, text):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"mine.yaml is empty; it must be a mapping of sections"):
        load_config(str(path))


def test_run_config_errors_name_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("fl: [1,\n")
    with pytest.raises(ConfigError, match=r"run config .*config.yaml is not valid YAML"):
        load_run_config(path)
    path.write_text("fl: {rounds: three}\n")
    with pytest.raises(ConfigError, match=r"config.yaml: invalid configuration:\n  fl.rounds: "):
        load_run_config(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(ConfigError, match=r"config.yaml is a directory"):
        load_run_config(path)


@pytest.mark.parametrize(
    "override", ["train.lr=.inf", "data.dirichlet_alpha=.inf", "flower.round_timeout=.inf", "peft.alpha=-.inf"]
)
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: Input should be a finite number"):
        load_config("default", [override])


def test_negative_seed_is_a_config_error():
    with pytest.raises(ConfigError, match=r"fl.seed: Input should be greater than or equal to 0 \(got -1\)"):
        load_config("default", ["fl.seed=-1"])


@pytest.mark.parametrize("key", ["recipe", "output.dir", "model.name", "data.source", "fl.strategy"])
def test_a_nul_character_in_a_setting_is_refused(key):
    with pytest.raises(ConfigError, match=rf"{key}: contains a NUL character"):
        load_config("default", [f'{key}="a\\0b"'])


@pytest.mark.parametrize("key", ["model.name", "data.source"])
def test_a_path_under_an_unknown_home_directory_is_refused(key):
    with pytest.raises(ConfigError, match=rf"{key}: starts with the home directory of an unknown user"):
        load_config("default", [f"{key}=~no_such_user_qq/x.jsonl"])


def test_validation_messages_stay_short():
    with pytest.raises(ConfigError) as err:
        load_config("default", [f"fl.bogus{i}=1" for i in range(25)])
    assert str(err.value).endswith("\n  ... and 15 more") and len(str(err.value).splitlines()) == 12
    with pytest.raises(ConfigError) as err:
        load_config("default", ["output.dir=" + "x" * 5000])
    assert "output.dir: String should have at most 4096 characters" in str(err.value) and len(str(err.value)) < 300
    with pytest.raises(ConfigError) as err:
        load_config("default", ["model.quantization=8bit", "peft.method=full"])
    assert "\n  peft.method=full trains every base weight" in str(err.value)  # a whole-config rule: no ': ' prefix
