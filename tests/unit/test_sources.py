"""Named datasets in their published schemas, loaded from small local fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpeft.data.federated import load_rows
from fedpeft.data.sources import DataSourceError, load_source_rows
from fedpeft.data.text_tasks import LabelledText, TextPair

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_dolly_rows_use_the_alpaca_template_with_context():
    rows = load_source_rows(str(FIXTURES / "dolly.jsonl"), "dolly", "instruction", "alpaca")
    assert len(rows) == 30 and all(isinstance(r, TextPair) for r in rows)
    assert "### Instruction:\nName 2 uses of a kettle.\n\nInput:\nA short note" in rows[0].prompt
    assert "Input:" not in rows[1].prompt
    assert rows[0].response.startswith("It can hold") and rows[1].category == "closed_qa"


def test_guanaco_commits_use_astraios_question_answer_format():
    row = load_source_rows(str(FIXTURES / "guanaco_commits.jsonl"), "guanaco-commits", "instruction", "alpaca")[3]
    assert row.prompt == "Question: Fix the off-by-one error in loop number 3 of the parser.\n\nAnswer: "
    assert row.response.startswith("for i in range(len(items) - 0)")


def test_cola_csv_gives_integer_labels():
    rows = load_source_rows(str(FIXTURES / "cola.csv"), "cola", "text_classification", "alpaca")
    assert len(rows) == 36 and all(isinstance(r, LabelledText) for r in rows)
    assert [r.label for r in rows[:4]] == [1, 0, 1, 0] and rows[0].text == "The cat sat on the mat 0."


def test_codexglue_schemas():
    defect = load_source_rows(str(FIXTURES / "codexglue_defect.jsonl"), "codexglue-defect", "defect", "alpaca")
    assert [(r.label, r.category) for r in defect[:2]] == [(0, "FFmpeg"), (1, "qemu")]
    c2t = load_source_rows(
        str(FIXTURES / "codexglue_code_to_text.jsonl"), "codexglue-code-to-text", "code_to_text", "alpaca"
    )
    assert c2t[4].response == "Add 4 to x ." and c2t[4].category == "pallets"  # repo owner
    assert "def f4 ( x ) : return x + 4" in c2t[4].prompt
    completion = load_source_rows(
        str(FIXTURES / "codexglue_completion.jsonl"), "codexglue-completion", "completion", "alpaca"
    )
    assert completion[0].prompt == "" and completion[0].response.startswith("<s> import os def f0")


def test_bigclonebench_pairs_and_advtest_queries():
    clone = load_source_rows(str(FIXTURES / "codexglue_clone.jsonl"), "codexglue-clone", "clone", "alpaca")
    assert [r.label for r in clone[:3]] == [1, 0, 1] and all(isinstance(r, LabelledText) for r in clone)
    assert clone[1].text.startswith("public int sum1(") and clone[1].text_b.startswith("public String name1(")
    search = load_source_rows(str(FIXTURES / "codexglue_search_adv.jsonl"), "codexglue-search", "code_search", "alpaca")
    assert search[4].prompt == "Add 4 to x ." and search[4].response == "def f4 ( x ) : return x + 4"
    assert [r.category for r in search[:3]] == ["pallets", "psf", "django"]


def test_parquet_and_json_array_files_load_the_same_rows(tmp_path):
    import datasets

    records = [json.loads(line) for line in (FIXTURES / "dolly.jsonl").read_text().splitlines()]
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "dolly.parquet"))
    (tmp_path / "dolly.json").write_text(json.dumps(records))
    expected = load_source_rows(str(FIXTURES / "dolly.jsonl"), "dolly", "instruction", "alpaca")
    for name in ("dolly.parquet", "dolly.json"):
        assert load_source_rows(str(tmp_path / name), "dolly", "instruction", "alpaca") == expected


def test_missing_column_names_the_column_and_the_schema(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "x", "context": "", "category": "c"}) + "\n")
    with pytest.raises(DataSourceError, match=r"lacks column\(s\) \['response'\] of the 'dolly' schema; it needs: "):
        load_source_rows(str(path), "dolly", "instruction", "alpaca")


def test_wrong_task_unknown_source_and_missing_file():
    with pytest.raises(
        DataSourceError, match="data.task='defect' cannot use the 'dolly' schema; it feeds: instruction"
    ):
        load_source_rows(str(FIXTURES / "dolly.jsonl"), "dolly", "defect", "alpaca")
    with pytest.raises(DataSourceError, match="neither 'stdlib', a known hub id"):
        load_source_rows("someone/some-dataset", None, "instruction", "alpaca")
    with pytest.raises(DataSourceError, match="no such file"):
        load_source_rows("missing.jsonl", "dolly", "instruction", "alpaca")
    with pytest.raises(
        DataSourceError, match="data.task='defect' cannot use the 'codexglue-clone' schema; it feeds: clone"
    ):
        load_source_rows("x.jsonl", "codexglue-clone", "defect", "alpaca")


def test_unreachable_hub_says_how_to_pass_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataSourceError, match=r"could not load 'databricks/databricks-dolly-15k'.*data.source=/path"):
        load_source_rows("databricks/databricks-dolly-15k", None, "instruction", "alpaca")


def test_labels_outside_the_task_range_are_rejected(tmp_path):
    path = tmp_path / "cola.csv"
    path.write_text("sentence,label\nfine.,1\nodd.,2\n")
    with pytest.raises(DataSourceError, match="label 2 is outside 0..1"):
        load_rows(str(path), None, "text_classification", "alpaca", "cola")


def test_a_source_that_is_neither_a_file_nor_the_schemas_hub_id_is_refused():
    with pytest.raises(DataSourceError, match="neither a local .json"):
        load_source_rows("cola.tsv", "cola", "text_classification", "alpaca")
    with pytest.raises(DataSourceError, match="nor the hub id of the 'cola' schema"):
        load_source_rows("nyu-mll/glue/sst2", "cola", "text_classification", "alpaca")


def test_encoder_tokenizers_use_cls_and_sep():
    from types import SimpleNamespace

    from fedpeft.data.text_tasks import LabelledText, tokenize_labelled

    class Bertish(SimpleNamespace):
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[ord(c) for c in t] for t in texts]}

    tok = Bertish(bos_token_id=None, eos_token_id=None, cls_token_id=101, sep_token_id=102)
    (example,), _ = tokenize_labelled([LabelledText("ab", 1, "c", text_b="c")], tok, 16)
    assert example.input_ids == (101, 97, 98, 102, 99, 102)


@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json", "rows.csv", "rows.parquet"])
def test_an_empty_file_is_named_as_empty(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataSourceError, match=rf"data.source '.*{name}' is empty"):
        load_source_rows(str(tmp_path / name), "cola", "text_classification", "alpaca")


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        (
            "rows.jsonl",
            b'{"sentence": "ok", "label": 1}\n{"sentence": "cut',
            r"line 2 is not valid JSON \(Unterminated string",
        ),
        ("rows.json", b'[{"sentence": "ok", "label": 1}, {"sent', r"line 1 is not valid JSON"),
        ("rows.json", b'[{"sentence": "ok", "label": 1}, null]', r"item 2 of its array is NoneType, not an object"),
        ("rows.parquet", b"PAR1 not really parquet", r"is not a readable .parquet file \(ArrowInvalid"),
        ("rows.csv", b'"sentence,label\nsoup,1\n', r"is not a readable .csv file"),
        ("rows.csv", "sentence,label\ncaf\u00e9,1\n".encode("latin-1"), r"line 2 is not UTF-8 text"),
        ("rows.jsonl", '{"sentence": "x", "label": 1}\n'.encode("utf-16-le"), r"line 1 holds NUL bytes"),
        ("rows.jsonl", b"\xff\xfe garbage", r"line 1 is not UTF-8 text"),
    ],
)
def test_an_unreadable_file_is_a_data_source_error_naming_it(tmp_path, name, content, problem):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataSourceError, match=rf"data.source '.*{name}' {problem}"):
        load_source_rows(str(tmp_path / name), "cola", "text_classification", "alpaca")


def test_json_rows_that_are_not_objects_are_refused_before_pyarrow_reads_them(tmp_path):
    """pyarrow's JSON reader (under datasets) crashes the process with a segmentation fault on a file that
    opens with null: the check must come first. Run in a child process, so a regression fails this test
    instead of killing the test session."""
    import subprocess
    import sys

    files = {"nulls.jsonl": "null\nnull\n", "null.json": "null", "numbers.jsonl": "\n1\n"}
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    script = (
        "import sys\nfrom fedpeft.data.sources import DataSourceError, load_source_rows\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n        load_source_rows(path, 'cola', 'text_classification', 'alpaca')\n"
        "    except DataSourceError as err:\n        print(err)\n"
    )
    paths = [str(tmp_path / name) for name in files]
    proc = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [line.split("'")[1] for line in lines] == paths
    assert "line 1 ('null') is not a JSON object" in lines[0] and "opens with 'null'" in lines[1]
    assert "line 2 ('1') is not a JSON object" in lines[2]


def test_a_directory_or_a_name_too_long_is_named(tmp_path):
    (tmp_path / "rows.jsonl").mkdir()
    with pytest.raises(DataSourceError, match=r"rows.jsonl' is a directory, not a .jsonl file"):
        load_source_rows(str(tmp_path / "rows.jsonl"), "cola", "text_classification", "alpaca")
    with pytest.raises(DataSourceError, match=r"File name too long"):
        load_source_rows(str(tmp_path / ("x" * 300 + ".jsonl")), "cola", "text_classification", "alpaca")


@pytest.mark.parametrize(
    ("schema", "task", "row", "message"),
    [
        (
            "codexglue-defect",
            "defect",
            {"func": None, "target": 0, "project": "p"},
            "column 'func' is null; the 'codexglue-defect' schema needs a string",
        ),
        ("codexglue-defect", "defect", {"func": 3, "target": 0, "project": "p"}, "column 'func' is 3"),
        (
            "codexglue-defect",
            "defect",
            {"func": "f", "target": 7, "project": "p"},
            "column 'target' is 7; the 'codexglue-defect' schema needs true/false or 0/1",
        ),
        ("codexglue-defect", "defect", {"func": "f", "target": "yes", "project": "p"}, "column 'target' is 'yes'"),
        ("codexglue-clone", "clone", {"func1": "a", "func2": "b", "label": float("nan")}, "column 'label' is nan"),
        (
            "cola",
            "text_classification",
            {"sentence": "s", "label": None},
            "column 'label' is null; the 'cola' schema needs a class id",
        ),
        ("cola", "text_classification", {"sentence": "s", "label": 0.5}, "column 'label' is 0.5"),
        (
            "codexglue-completion",
            "completion",
            {"code": "a b"},
            "column 'code' is 'a b'; the 'codexglue-completion' schema needs a list of strings",
        ),
    ],
)
def test_wrong_typed_values_name_the_row_and_column_instead_of_becoming_labels(tmp_path, schema, task, row, message):
    """Before: a null label was a TypeError, NaN, 7 or 'yes' as a defect target silently became label 1, a
    number where text belongs reached the tokenizer."""
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataSourceError, match=r"rows.jsonl' row 1: ") as err:
        load_source_rows(str(path), schema, task, "alpaca")
    assert message in str(err.value)


def test_too_few_rows_are_found_before_tokenizing():
    from fedpeft.data.federated import check_row_counts
    from fedpeft.data.partition import PartitionError

    rows = load_source_rows(str(FIXTURES / "cola.csv"), "cola", "text_classification", "alpaca")
    check_row_counts(rows, "cola.csv", test_size=4, max_rows=None, n_clients=28)
    with pytest.raises(
        PartitionError, match=r"fl.clients=29 is more than the 28 training rows data.source 'cola.csv' has once 8 go"
    ):
        check_row_counts(rows, "cola.csv", test_size=4, max_rows=None, n_clients=29)
    with pytest.raises(PartitionError, match=r"data.source 'one.csv' has 1 row\(s\), fewer than data.test_size=4"):
        check_row_counts(rows[:1], "one.csv", test_size=4, max_rows=None, n_clients=1)
