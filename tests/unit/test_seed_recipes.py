"""The seed recipes (``s0-...`` to ``s4-...``): every recipe and variant validates; offline variants use only
the built-in world and keep their model's architecture family; ``extends``, variants and ``--offline`` behave;
``fedpeft recipes`` groups them by seed; each recipe's own compare entries are real strategies/methods."""

from __future__ import annotations

import pytest
from transformers import AutoConfig, AutoTokenizer
from typer.testing import CliRunner

from fedpeft.cli import app
from fedpeft.config import ConfigError, list_recipes, load_config
from fedpeft.config.recipes import (
    SEED_SYSTEMS,
    read_recipe,
    recipe_compare_entries,
    recipe_groups,
    with_offline,
)
from fedpeft.data.stdlib_corpus import load_stdlib_corpus
from fedpeft.data.tasks.common import first_sentence
from fedpeft.data.tasks.text_classification import acceptability_rows
from fedpeft.experiment.checks import setup_checks
from fedpeft.experiment.compare import entry_config, parse_entries
from fedpeft.models.builtin import build_builtin, pretrained_dir

SEED_RECIPES = sorted(name for name in list_recipes() if name[:2] in SEED_SYSTEMS)
VARIANTS = [
    f"{name}@{variant}" for name in sorted(list_recipes()) for _, rows in recipe_groups().items()
    for recipe, _, variants in rows if recipe == name for variant in variants
]  # fmt: skip

# The published model's architecture (its config's model_type) -> the stand-in family its offline variant must
# use: encoders stay encoders, T5 stays T5, GPT-2 stays GPT-2; Llama-family and StarCoder bases map to the
# pretrained Llama-shaped builtin:small (a decoder, like them).
REAL_FAMILIES = {
    "microsoft/codebert-base": "bert",  # RoBERTa: BERT-shaped
    "Salesforce/codet5-base": "t5",
    "microsoft/CodeGPT-small-py": "gpt2",
    "distilbert-base-uncased": "distilbert",
    "openai-community/gpt2": "gpt2",
    "bigcode/starcoderbase-1b": "llama",
    "huggyllama/llama-7b": "llama",
}


def test_every_seed_system_has_recipes_and_they_are_grouped_under_it():
    groups = recipe_groups()
    for prefix, title in SEED_SYSTEMS.items():
        names = [name for name, _, _ in groups[title]]
        assert names and all(name.startswith(prefix + "-") for name in names)
    assert {"default", "modules"} <= {name for name, _, _ in groups["fedpeft's own"]}
    assert sum(len(rows) for rows in groups.values()) == len(list_recipes())


@pytest.mark.parametrize("recipe", SEED_RECIPES + VARIANTS)
def test_every_recipe_and_variant_validates_and_builds_its_strategy(recipe):
    config = load_config(recipe)
    assert config.recipe == recipe
    setup_checks(config)


@pytest.mark.parametrize("recipe", SEED_RECIPES)
def test_offline_variant_uses_only_the_builtin_world_and_keeps_the_family(recipe):
    real, offline = load_config(recipe), load_config(with_offline(recipe, True))
    assert not real.model.name.startswith("builtin:")
    assert offline.model.name.startswith("builtin:") and offline.data.source == "stdlib"
    assert offline.model.quantization == "none"  # bitsandbytes' 8-bit kernels need a GPU
    family = REAL_FAMILIES[real.model.name]
    path = build_builtin(offline.model.name)
    assert AutoConfig.from_pretrained(path).model_type == family
    # what stays: the task, the PEFT method and the strategy are the seed's
    assert (offline.data.task, offline.peft.method, offline.fl.strategy) == (
        real.data.task,
        real.peft.method,
        real.fl.strategy,
    )


@pytest.mark.parametrize("recipe", SEED_RECIPES)
def test_each_recipe_compares_its_seeds_own_baselines(recipe, tmp_path):
    kind, entries = recipe_compare_entries(recipe)
    parsed = parse_entries(entries, kind)
    configs = [entry_config(recipe, [], entry, tmp_path) for entry in parsed]
    for config in configs:
        setup_checks(config)
    labels = [e.label for e in parsed]
    if recipe.startswith("s0-"):
        assert labels[:4] == ["fedavg", "fedprox:mu=0.01", "fedtrimmedavg:beta=0.2", "fedmedian"]
        assert {"centralised", "local"} <= set(labels)
    if kind == "methods":  # the catalogue: every method trained on the same rows for the same steps
        assert {c.peft.method for c in configs} == {
            "full",
            "lora",
            "ia3",
            "ptuning",
            "prompt",
            "adapter_h",
            "adapter_p",
            "parallel",
        }
        assert len({(c.data, c.train) for c in configs}) == 1
    else:
        assert load_config(recipe).fl.strategy in {c.fl.strategy for c in configs}


@pytest.mark.parametrize("family", ["bert", "distilbert", "t5", "gpt2"])
def test_stand_ins_are_seeded_and_share_the_pretrained_tokenizer(family):
    path = build_builtin(f"builtin:{family}")
    assert AutoConfig.from_pretrained(path).model_type == family
    ours, small = AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(pretrained_dir("small"))
    text = "def add(a, b):\n    return a + b\n"
    assert ours(text)["input_ids"] == small(text)["input_ids"]


def test_extends_merges_sections_and_a_null_removes_a_key(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: default\nfl:\n  rounds: 2\n  strategy_args: null\ntrain:\n  lr: 0.01\n")
    config, default = load_config(str(child)), load_config("default")
    assert (config.fl.rounds, config.train.lr) == (2, 0.01)
    assert config.fl.clients == default.fl.clients and config.peft == default.peft  # inherited
    assert config.recipe == "child"
    removed = read_recipe("s3-trust-local@offline")
    assert removed["fl"].get("strategy_args", {}) == {}  # the parent's trust settings are gone


def test_bad_extends_and_variants_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: nosuch\n")
    with pytest.raises(ConfigError, match=r"extends must name a shipped recipe, got 'nosuch'; valid: .*default"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match=r"has no variant 'nope'; its variants: label, quantity, natural, offline"):
        load_config("s0-codexglue-defect@nope")
    with pytest.raises(ConfigError, match=r"has no variant 'thresh'; its variants: offline"):
        load_config("s3-trust-local@thresh")


def test_offline_is_added_once_and_variants_apply_in_order():
    assert with_offline("s4-shepherd", True) == "s4-shepherd@offline"
    assert with_offline("s4-shepherd@offline", True) == "s4-shepherd@offline"
    assert with_offline("s4-shepherd", False) == "s4-shepherd"
    both = load_config("s4-shepherd@dirichlet@offline")
    assert (both.data.partition, both.data.min_client_size) == ("dirichlet", 20)  # offline's minimum wins
    label = load_config("s0-codexglue-defect@label")
    assert (label.data.partition, label.data.partition_key) == ("dirichlet", "label")


def test_recipes_command_groups_by_seed_with_one_line_each():
    result = CliRunner().invoke(app, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for title in SEED_SYSTEMS.values():
        assert title in lines
    for name in list_recipes():
        assert sum(line.split()[0] == name for line in lines if line.startswith("  ")) == 1


def test_offline_acceptability_rows_are_sentences_and_their_shuffles():
    records = load_stdlib_corpus()[:400]
    rows = acceptability_rows(records)
    firsts = {first_sentence(r.docstring) for r in records}
    word_sets = [sorted(f.split()) for f in firsts]
    assert {r.label for r in rows} == {0, 1}
    for row in rows:
        if row.label == 1:
            assert row.text in firsts
        else:
            assert row.text not in firsts
            assert sorted(row.text.split()) in word_sets
    # a function's row does not depend on which other functions are loaded
    first_half = acceptability_rows(records[:200])
    assert acceptability_rows(records[200:]) == rows[len(first_half) :]


def test_label_partition_splits_by_class_and_is_refused_without_labels():
    """S0's label-imbalanced split: with data.partition_key=label the Dirichlet shares are drawn per class, so the
    partition table's categories are the labels and clients' class mixes differ; a task without labels is refused."""
    from fedpeft.data.partition import PartitionError
    from fedpeft.experiment.setup import build_data

    tokenizer = AutoTokenizer.from_pretrained(build_builtin("builtin:micro"))
    few = ["data.modules=[email,logging,asyncio]", "data.max_rows=200", "data.test_size=8", "data.max_length=256"]
    config = load_config("default", [*few, "data.task=defect", "fl.clients=4", "data.partition=dirichlet"])
    by_module = build_data(config, tokenizer).report["categories"]
    by_label = build_data(
        load_config(
            "default",
            [*few, "data.task=defect", "fl.clients=4", "data.partition=dirichlet", "data.partition_key=label"],
        ),
        tokenizer,
    ).report["categories"]
    assert {c for client in by_module.values() for c in client} <= {"email", "logging", "asyncio"}
    assert {c for client in by_label.values() for c in client} == {"0", "1"}
    shares = [client.get("1", 0) / max(1, sum(client.values())) for client in by_label.values()]
    assert max(shares) - min(shares) > 0.2  # Dirichlet(0.5) over two classes skews the clients' mixes
    with pytest.raises(PartitionError, match="data.partition_key=label.*data.task=instruction has no labels"):
        build_data(load_config("default", [*few, "fl.clients=4", "data.partition_key=label"]), tokenizer)
