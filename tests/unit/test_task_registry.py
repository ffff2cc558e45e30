"""Every registered task and partition scheme through one shared tester: a task's rows (from the stdlib
corpus and from each published schema that feeds it) tokenize to examples of its head's shape, and its
declared scoring, labels and packing support agree with that head; every partition scheme splits rows into
disjoint parts. Also: the tables of before the registry are derived from it unchanged, duplicates are
refused, and an unknown name is an error naming the config key and every valid name."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedpeft.config import ConfigError, load_config
from fedpeft.data import text_tasks
from fedpeft.data.partition import PARTITIONERS, PARTITIONS, PartitionError, describe_partitions, partition_rows
from fedpeft.data.sources import SCHEMAS, load_source_rows
from fedpeft.data.stdlib_corpus import load_stdlib_corpus
from fedpeft.data.tasks import TASKS, Task, describe_tasks, get_task, register_task, rows_for_task
from fedpeft.data.tasks.common import LabelledText, TextPair, tokenize_labelled, tokenize_rows, tokenize_task_rows

FIXTURES = Path(__file__).parent.parent / "fixtures"
FIXTURE_OF_SCHEMA = {
    "dolly": "dolly.jsonl",
    "guanaco-commits": "guanaco_commits.jsonl",
    "cola": "cola.csv",
    "sst2": "cola.csv",  # the same columns as CoLA
    "codexglue-defect": "codexglue_defect.jsonl",
    "codexglue-code-to-text": "codexglue_code_to_text.jsonl",
    "codexglue-completion": "codexglue_completion.jsonl",
    "codexglue-clone": "codexglue_clone.jsonl",
    "codexglue-search": "codexglue_search_adv.jsonl",
}
MODULES = ["json", "csv", "argparse"]
MAX_LENGTH = 2048
BOS, EOS = 1, 2

# The tables as they were written by hand before the registry, for the tasks that existed then.
# text_classification gained its offline (stdlib) rows with the seed recipes (issue 19).
OLD_TEXT_TASKS = {"instruction", "completion", "code_to_text", "defect", "clone", "code_search", "text_classification"}
OLD_TASK_HEADS = {
    "instruction": "causal_lm",
    "completion": "causal_lm",
    "code_to_text": "causal_lm",
    "defect": "sequence_classification",
    "clone": "sequence_classification",
    "text_classification": "sequence_classification",
    "code_search": "embedding",
}
OLD_TASK_NUM_LABELS = {"defect": 2, "clone": 2, "text_classification": 2}
OLD_THRESHOLD_ON_VALIDATION = {"clone"}
OLD_SCORE_SPECIAL_TOKENS = {
    "instruction": True,
    "completion": False,
    "code_to_text": True,
    "defect": True,
    "clone": True,
    "text_classification": True,
    "code_search": True,
}
OLD_GENERATION_METRICS = {"code_to_text": "bleu"}
OLD_PARTITIONERS = ("iid", "shards", "dirichlet", "quantity", "natural")
ORIGINAL_TASKS = set(OLD_TASK_HEADS)


class CharTokenizer(SimpleNamespace):
    """One token per character (its code point + 3), BOS 1 and EOS 2: lengths and boundaries are exact."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) + 3 for c in t] for t in texts]}


TOKENIZER = CharTokenizer(bos_token_id=BOS, eos_token_id=EOS, cls_token_id=None, sep_token_id=None)


def encode(text: str) -> list[int]:
    return TOKENIZER([text])["input_ids"][0]


@pytest.fixture(scope="module")
def records():
    return load_stdlib_corpus(MODULES)


def row_sources() -> list[tuple[str, str]]:
    """(task, where its rows come from): the stdlib corpus where the task has a version of it, and every
    published schema that feeds the task."""
    sources = [(name, "stdlib") for name, task in TASKS.items() if task.corpus_rows is not None]
    sources += [(task, schema) for schema, spec in SCHEMAS.items() for task in spec.tasks]
    return sources


def task_rows(task: str, source: str, records) -> list:
    if source == "stdlib":
        return rows_for_task(task, records, "alpaca")
    return load_source_rows(str(FIXTURES / FIXTURE_OF_SCHEMA[source]), source, task, "alpaca")


@pytest.mark.parametrize("name", TASKS.names())
def test_every_task_declares_a_consistent_spec(name):
    task = get_task(name)
    assert task.name == name
    assert task.summary and "\n" not in task.summary
    classifier = task.head == "sequence_classification"
    assert task.scoring == {"causal_lm": "language_model", "embedding": "retrieval"}.get(task.head, "classification")
    assert task.supports_packing == (task.head == "causal_lm")
    assert (task.num_labels is not None) == classifier and (task.num_labels or 2) >= 2
    assert not task.threshold_on_validation or classifier
    assert task.generation_metric is None or task.head == "causal_lm"
    assert task.tokenize in (tokenize_rows, tokenize_labelled)  # the two row kinds there are
    assert task.corpus_rows is not None or any(name in s.tasks for s in SCHEMAS.values()), "no rows from anywhere"


@pytest.mark.parametrize(("name", "source"), row_sources())
def test_every_task_tokenizes_its_rows_to_its_heads_shape(name, source, records):
    task = get_task(name)
    rows = task_rows(name, source, records)
    assert rows and all(r.category and r.split in ("train", "valid", "test") for r in rows)
    examples, dropped = task.tokenize(rows, TOKENIZER, MAX_LENGTH)
    assert examples and len(examples) + dropped == len(rows)
    assert (examples, dropped) == tokenize_task_rows(rows, TOKENIZER, MAX_LENGTH)  # what the row kind implies
    assert all(len(e.input_ids) <= MAX_LENGTH and e.input_ids[0] == BOS for e in examples)
    if task.head == "sequence_classification":
        assert all(isinstance(r, LabelledText) for r in rows)
        assert all(e.prompt_len == 0 and 0 <= e.label < task.num_labels for e in examples)
        kept = [
            r for r in rows if 2 + len(encode(r.text)) + (len(encode(r.text_b)) + 1 if r.text_b else 0) <= MAX_LENGTH
        ]
        first = kept[0]
        tail = encode(first.text_b) + [EOS] if first.text_b else []
        assert examples[0].input_ids == (BOS, *encode(first.text), EOS, *tail)
    else:
        # The response boundary: BOS + prompt, then the response and EOS (cut at max_length).
        assert all(isinstance(r, TextPair) for r in rows)
        assert all(e.label == -1 and 1 <= e.prompt_len < len(e.input_ids) for e in examples)
        first = next(r for r in rows if len(encode(r.prompt)) + 9 <= MAX_LENGTH)
        expected = ([BOS, *encode(first.prompt), *encode(first.response), EOS])[:MAX_LENGTH]
        assert examples[0].input_ids == tuple(expected) and examples[0].prompt_len == len(encode(first.prompt)) + 1
        assert examples[0].reference == first.response


def test_the_tables_of_before_the_registry_are_derived_unchanged():
    assert ORIGINAL_TASKS <= set(TASKS.names())
    original = {name: value for name, value in text_tasks.TASK_HEADS.items() if name in ORIGINAL_TASKS}
    assert original == OLD_TASK_HEADS
    assert {n: v for n, v in text_tasks.TASK_NUM_LABELS.items() if n in ORIGINAL_TASKS} == OLD_TASK_NUM_LABELS
    assert text_tasks.THRESHOLD_ON_VALIDATION & ORIGINAL_TASKS == OLD_THRESHOLD_ON_VALIDATION
    scored = {n: v for n, v in text_tasks.SCORE_SPECIAL_TOKENS.items() if n in ORIGINAL_TASKS}
    assert scored == OLD_SCORE_SPECIAL_TOKENS
    assert {n: v for n, v in text_tasks.GENERATION_METRICS.items() if n in ORIGINAL_TASKS} == OLD_GENERATION_METRICS
    assert set(text_tasks.TEXT_TASKS) & ORIGINAL_TASKS == OLD_TEXT_TASKS
    assert text_tasks.TEXT_TASKS["defect"] is text_tasks.defect_rows
    assert text_tasks.TEXT_TASKS["instruction"] is text_tasks.instruction_rows
    assert text_tasks.rows_for_task is rows_for_task and text_tasks.tokenize_task_rows is tokenize_task_rows
    assert set(text_tasks.TASK_HEADS) == set(TASKS.names())


def test_a_duplicate_task_is_refused():
    with pytest.raises(ValueError, match="task 'instruction' is already registered"):
        register_task(Task(name="instruction", summary="again", head="causal_lm", tokenize=tokenize_rows))
    assert get_task("instruction").summary != "again"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"head": "sequence_classification"}, "num_labels is set exactly when"),
        ({"head": "causal_lm", "num_labels": 2}, "num_labels is set exactly when"),
        ({"head": "sequence_classification", "num_labels": 1}, "at least 2"),
        ({"head": "causal_lm", "threshold_on_validation": True}, "only a classification task"),
        ({"head": "embedding", "generation_metric": "bleu"}, "only a causal_lm task"),
        ({"head": "token_classification"}, "is not one of"),
    ],
)
def test_a_contradictory_task_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Task(name="x", summary="x", tokenize=tokenize_rows, **fields)


def test_an_unknown_task_is_named_with_every_valid_one():
    with pytest.raises(ValueError, match=r"unknown data.task 'nope'; valid: ") as err:
        get_task("nope")
    assert all(name in str(err.value) for name in TASKS.names())
    with pytest.raises(ConfigError, match=r"data.task: must be ") as err:
        load_config("default", ["data.task=nope"])
    assert all(repr(name) in str(err.value) for name in TASKS.names())


@pytest.mark.parametrize("name", TASKS.names())
def test_the_config_takes_every_task_and_refuses_packing_for_whole_example_tasks(name):
    assert load_config("default", [f"data.task={name}"]).data.task == name
    if get_task(name).supports_packing:
        assert load_config("default", [f"data.task={name}", "train.packing=true"]).train.packing
    else:
        with pytest.raises(ConfigError, match=f"data.task={name} scores whole examples"):
            load_config("default", [f"data.task={name}", "train.packing=true"])


def test_tasks_and_partitions_describe_themselves():
    assert [row[0] for row in describe_tasks()] == sorted(TASKS.names())
    assert all(summary and settings == [] for _, summary, settings in describe_tasks())
    assert [row[0] for row in describe_partitions()] == sorted(PARTITIONS.names())
    assert all(summary for _, summary, _ in describe_partitions())


CATEGORIES = [f"m{i % 6}" for i in range(90)] + [f"m{i % 2}" for i in range(30)]


@pytest.mark.parametrize("name", PARTITIONS.names())
def test_every_partition_gives_disjoint_sorted_parts_over_the_rows(name):
    parts = partition_rows(name, CATEGORIES, 4, np.random.default_rng(7), min_size=1)
    assert len(parts) == 4 and all(len(p) >= 1 for p in parts)
    assigned = np.concatenate(parts)
    assert len(set(assigned.tolist())) == len(assigned)  # disjoint
    assert set(assigned.tolist()) <= set(range(len(CATEGORIES)))
    assert all(np.array_equal(p, np.sort(p)) for p in parts)
    again = partition_rows(name, CATEGORIES, 4, np.random.default_rng(7), min_size=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))  # seeded


def test_the_partition_names_are_derived_unchanged_and_unknown_ones_named():
    assert PARTITIONERS == OLD_PARTITIONERS
    with pytest.raises(
        PartitionError, match=r"unknown data.partition 'zipf'; valid: iid, shards, dirichlet, quantity, natural"
    ):
        partition_rows("zipf", CATEGORIES, 4, np.random.default_rng(0))
    with pytest.raises(
        ConfigError, match=r"data.partition: must be 'iid', 'shards', 'dirichlet', 'quantity' or 'natural'"
    ):
        load_config("default", ["data.partition=zipf"])
    with pytest.raises(ValueError, match="partition 'iid' is already registered"):
        PARTITIONS.register("iid")(lambda categories, n_clients, rng, options: [])
