"""Each client's rows from its own file (``data.client_files``, a SuperNode's data file): the messages for bad
files, with and without redaction, and the one function both paths go through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedpeft.config import ConfigError, load_config
from fedpeft.data.client_files import (
    build_client_data,
    build_file_federation,
    check_client_row_count,
    load_client_rows,
)
from fedpeft.data.federated import split_client, validation_count
from fedpeft.data.sources import DataSourceError
from fedpeft.data.tasks import get_task
from fedpeft.seeding import numpy_rng

FIXTURES = Path(__file__).parent.parent / "fixtures"
SECRET = "SECRET-7f3a"
"""Planted in every bad file: a redacted message must never contain it."""
WHERE = "node 3's data-file"


@pytest.fixture(scope="module")
def tokenizer():
    from fedpeft.models.base import load_tokenizer

    return load_tokenizer("builtin:micro")


def dolly(i: int, **changes) -> dict:
    row = {"instruction": f"Name {i} uses of a kettle.", "context": "", "response": f"Use {i}.", "category": "qa"}
    return {**row, **changes}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def cola_csv(path: Path, labels: list[int]) -> Path:
    path.write_text("sentence,label\n" + "".join(f"{SECRET} sentence {i}.,{y}\n" for i, y in enumerate(labels)))
    return path


# (file name, writer, schema, task, words every message has, words only the unredacted one has)
BAD_FILES = [
    ("missing.jsonl", None, "dolly", "instruction", ["no such file"], []),
    ("empty.jsonl", lambda p: p.write_text(""), "dolly", "instruction", ["is empty"], []),
    ("blank.jsonl", lambda p: p.write_text("\n \n"), "dolly", "instruction", ["has no rows"], []),
    (
        "malformed.jsonl",
        lambda p: write_jsonl(p, [dolly(1), '{"instruction": "' + SECRET]),
        "dolly",
        "instruction",
        ["line 2 is not valid JSON", "at column"],
        [],
    ),
    (
        "text.jsonl",
        lambda p: write_jsonl(p, [dolly(1), f"{SECRET} is plain text"]),
        "dolly",
        "instruction",
        ["line 2", "is not a JSON object"],
        [SECRET],
    ),
    ("opens.json", lambda p: p.write_text(f"{SECRET}\n"), "dolly", "instruction", ["array of rows"], [SECRET]),
    (
        "other-schema.jsonl",
        lambda p: write_jsonl(p, [{"func": SECRET, "target": 1, "project": "p", SECRET: 1}]),
        "dolly",
        "instruction",
        ["lacks column(s)", "'dolly' schema", "it needs: instruction, context, response, category"],
        [SECRET],
    ),
    ("other-task.csv", lambda p: cola_csv(p, [0, 1]), "cola", "instruction", ["feeds text_classification"], []),
    (
        "label.csv",
        lambda p: cola_csv(p, [0, 1, 5]),
        "cola",
        "text_classification",
        ["row 3: label", "outside 0..1", "text_classification"],
        ["label 5"],
    ),
    (
        "value.jsonl",
        lambda p: write_jsonl(p, [dolly(1), dolly(2, response=[SECRET])]),
        "dolly",
        "instruction",
        ["row 2: column 'response'", "a string"],
        [SECRET],
    ),
    (
        "ragged.csv",
        lambda p: p.write_text(f"sentence,label\nfine,1\n{SECRET},1,{SECRET},{SECRET}\n"),
        "cola",
        "text_classification",
        ["not a readable .csv file"],
        [],
    ),
    ("rows.txt", lambda p: p.write_text(SECRET), "dolly", "instruction", ["is not a local .json, .jsonl"], []),
    ("no-schema.jsonl", lambda p: write_jsonl(p, [dolly(1)]), None, "instruction", ["data.schema", "dolly"], []),
    ("bad-schema.jsonl", lambda p: write_jsonl(p, [dolly(1)]), "dollyx", "instruction", ["unknown data.schema"], []),
]


@pytest.mark.parametrize(("name", "write", "schema", "task", "words", "unredacted"), BAD_FILES, ids=lambda v: v)
@pytest.mark.parametrize("redact", [False, True], ids=["plain", "redacted"])
def test_a_bad_file_is_named_with_its_problem_and_redacted_without_its_rows(
    tmp_path, name, write, schema, task, words, unredacted, redact
):
    path = tmp_path / name
    if write:
        write(path)
    where = f"{WHERE} {str(path)!r}"
    with pytest.raises(DataSourceError) as err:
        load_client_rows(str(path), schema, task, "alpaca", where, redact=redact)
    message = str(err.value)
    assert message.startswith(where)
    for word in words:
        assert word in message
    for word in unredacted:
        assert (word in message) != redact
    if redact:
        assert SECRET not in message.replace(where, "")


def test_unknown_message_shapes_are_not_passed_on_when_redacted(tmp_path, monkeypatch):
    import fedpeft.data.client_files as client_files

    def fails(source, *args):
        raise DataSourceError(f"data.source {source!r} holds {SECRET} in a way nobody foresaw")

    monkeypatch.setattr(client_files, "load_source_rows", fails)
    path = write_jsonl(tmp_path / "a.jsonl", [dolly(1)])
    with pytest.raises(DataSourceError, match=f"^{WHERE} holds {SECRET} in a way"):
        load_client_rows(str(path), "dolly", "instruction", "alpaca", WHERE)
    with pytest.raises(DataSourceError) as err:
        load_client_rows(str(path), "dolly", "instruction", "alpaca", WHERE, redact=True)
    assert str(err.value) == f"{WHERE} could not be read as a 'dolly' file"


def rows_of(path: Path, schema: str = "dolly", task: str = "instruction") -> list:
    return load_client_rows(str(path), schema, task, "alpaca", "test")


def test_validation_rows_follow_the_seeded_split_rule():
    assert [validation_count(n, f) for n, f in [(10, 0.1), (1, 0.1), (10, 0.0), (3, 0.5), (30, 0.25)]] == [
        1,
        0,
        0,
        2,
        8,
    ]
    pool = list(range(20))
    client = split_client(4, pool, np.arange(5, 15), 0.2, np.random.default_rng(7))
    assert sorted(client.train + client.val) == list(range(5, 15)) and len(client.val) == 2
    assert client.val == [pool[i] for i in np.random.default_rng(7).permutation(np.arange(5, 15))][:2]


def test_same_seed_and_client_give_identical_data(tokenizer):
    rows = rows_of(FIXTURES / "dolly.jsonl")

    def build(client_id: int):
        rng = numpy_rng(11, "data", client_id)
        return build_client_data(client_id, rows, None, tokenizer, "instruction", 0.2, 256, rng, 4, "x")

    first, again, other = build(2), build(2), build(3)
    assert first == again and len(first.val) == validation_count(30, 0.2) and len(first.train) == 24
    assert [e.input_ids for e in first.val] != [e.input_ids for e in other.val]
    examples, _ = get_task("instruction").tokenize(rows, tokenizer, 256)
    assert sorted(first.train + first.val, key=examples.index) == examples


def test_an_eval_file_gives_the_validation_rows_as_they_are(tokenizer):
    rows, eval_rows = rows_of(FIXTURES / "dolly.jsonl"), rows_of(FIXTURES / "guanaco_commits.jsonl", "guanaco-commits")
    client = build_client_data(
        0, rows, eval_rows[:5], tokenizer, "instruction", 0.5, 256, numpy_rng(1, "data", 0), 8, "x"
    )
    assert client.val == get_task("instruction").tokenize(eval_rows[:5], tokenizer, 256)[0]
    assert len(client.train) == 30


def test_fewer_rows_than_a_batch_say_what_to_change(tokenizer):
    rows = rows_of(FIXTURES / "dolly.jsonl")[:5]
    with pytest.raises(
        DataSourceError,
        match=r"^node 1 has 4 training row\(s\) once 1 go to validation, fewer than one "
        r"batch of train.batch_size=8; add rows or lower train.batch_size or data.val_fraction",
    ):
        build_client_data(1, rows, None, tokenizer, "instruction", 0.1, 256, numpy_rng(0, "data", 1), 8, "node 1")
    with pytest.raises(DataSourceError, match=r"^node 1: none of its 5 row\(s\) fits data.max_length=40"):
        build_client_data(1, rows, None, tokenizer, "instruction", 0.1, 40, numpy_rng(0, "data", 1), 2, "node 1")
    with pytest.raises(
        DataSourceError, match=r"^f has 5 training row\(s\), fewer than one batch of train.batch_size=6"
    ):
        check_client_row_count(5, True, 0.1, 6, "f")
    check_client_row_count(9, False, 0.1, 8, "f")


def test_a_file_federation_builds_each_client_as_its_node_would(tokenizer, tmp_path):
    files = [write_jsonl(tmp_path / f"c{i}.jsonl", [dolly(10 * i + j) for j in range(6 + i)]) for i in range(3)]
    evals = [write_jsonl(tmp_path / f"e{i}.jsonl", [dolly(100 + i)]) for i in range(3)]
    test_file = write_jsonl(tmp_path / "server.jsonl", [dolly(200 + j) for j in range(5)])
    common = dict(
        tokenizer=tokenizer,
        schema="dolly",
        task="instruction",
        template="alpaca",
        val_fraction=0.25,
        max_length=256,
        batch_size=2,
        seed=5,
        test_size=3,
    )
    data = build_file_federation(
        files=list(map(str, files)), eval_files=None, server_source=str(test_file), server_schema="dolly", **common
    )
    for i, client in enumerate(data.clients):
        alone = build_client_data(
            i, rows_of(files[i]), None, tokenizer, "instruction", 0.25, 256, numpy_rng(5, "data", i), 2, "x"
        )
        assert client == alone
    assert data.test == get_task("instruction").tokenize(rows_of(test_file)[:3], tokenizer, 256)[0]
    assert data.report["clients"] == {
        "client-0": {"train": 4, "val": 2},
        "client-1": {"train": 5, "val": 2},
        "client-2": {"train": 6, "val": 2},
    }
    assert data.report["categories"] == {"client-0": {"qa": 6}, "client-1": {"qa": 7}, "client-2": {"qa": 8}}
    assert set(data.report) == {
        "rows_total",
        "rows_used",
        "rows_dropped_too_long",
        "test_rows",
        "server_rows",
        "server_split",
        "server_rows_from",
        "partition",
        "clients",
        "categories",
    }
    assert (data.report["rows_total"], data.report["test_rows"], data.server, data.distractors) == (26, 3, [], [])
    with_eval = build_file_federation(files=list(map(str, files)), eval_files=list(map(str, evals)), **common)
    assert [len(c.val) for c in with_eval.clients] == [1, 1, 1] and with_eval.test == []
    with pytest.raises(DataSourceError, match=r"^data.client_files\[0\] '.*c0.jsonl' has 4 training row"):
        build_file_federation(files=list(map(str, files)), eval_files=None, **{**common, "batch_size": 5})
    with pytest.raises(DataSourceError, match=r"^data.client_eval_files\[0\] '.*nope.jsonl': no such file"):
        build_file_federation(files=list(map(str, files[:1])), eval_files=[str(tmp_path / "nope.jsonl")], **common)
    with pytest.raises(DataSourceError, match=r"^data.server_source '.*' lacks column"):
        build_file_federation(
            files=list(map(str, files)),
            eval_files=None,
            server_source=str(FIXTURES / "cola.csv"),
            server_schema="dolly",
            **common,
        )


FILES = "data.client_files=[a.jsonl, b.jsonl]"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([FILES, "fl.clients=3"], "data.client_files has 2 file(s) but fl.clients=3"),
        (
            [FILES, "fl.clients=2", "data.node_data=true"],
            "data.client_files and data.node_data=true exclude each other",
        ),
        ([FILES, "fl.clients=2", "runtime=flower-deployment"], "each node brings its file: set data.node_data=true"),
        (["data.node_data=true"], "data.node_data=true reads each client's rows on its own SuperNode"),
        (["data.node_data=true", "runtime=flower-sim"], "list the files in data.client_files"),
        ([FILES, "fl.clients=2", "data.client_eval_files=[e.jsonl]"], "data.client_eval_files has 1 file(s) for 2"),
        (["data.client_eval_files=[e.jsonl]"], "data.client_files, which is not set"),
        (["data.client_files=[]"], "data.client_files: names no file"),
        ([FILES, "fl.clients=2", "data.source=rows.jsonl"], "data.source='rows.jsonl' would not be read"),
        ([FILES, "fl.clients=2", "data.server_fraction=0.1"], "data.server_fraction=0.1 has none to take"),
        (["data.server_source=t.jsonl"], "data.server_source is the server's test rows when the clients bring"),
        (["data.server_schema=dolly"], "data.server_schema names the schema of data.server_source"),
    ],
)
def test_client_file_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("default", overrides)
    assert message in str(err.value)


def test_client_file_settings_accepted():
    c = load_config("default", [FILES, "fl.clients=2", "runtime=flower-sim", "data.client_eval_files=[c, d]"])
    assert c.data.client_files == ["a.jsonl", "b.jsonl"] and c.data.client_eval_files == ["c", "d"]
    c = load_config("default", ["data.node_data=true", "runtime=flower-deployment", "data.server_source=t.jsonl"])
    assert c.data.node_data and c.data.server_source == "t.jsonl" and c.data.client_files is None
