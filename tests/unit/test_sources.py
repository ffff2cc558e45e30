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
