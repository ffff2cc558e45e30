"""Real datasets by name: published schemas, loaded from the hub or from a local JSON, JSONL, CSV or
Parquet file in the same schema, and turned into the rows fedpeft's tasks use.

``data.source`` is ``stdlib`` (the built-in corpus), a hub id listed below, or a local file; a local
file says its schema with ``data.schema``. Columns are checked before anything is tokenized.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.data.text_tasks import LabelledText, TextPair, format_prompt

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class DataSourceError(ValueError):
    pass


@dataclass(frozen=True)
class Schema:
    hub_id: str
    hub_config: str | None
    hub_split: str
    columns: tuple[str, ...]
    tasks: tuple[str, ...]
    to_row: Callable[[dict[str, Any], str], TextPair | LabelledText]


def _dolly(r: dict, template: str) -> TextPair:
    instruction = r["instruction"] + (f"\n\nInput:\n{r['context']}" if r.get("context") else "")
    return TextPair(format_prompt(instruction, template), r["response"], r["category"])


def _guanaco(r: dict, template: str) -> TextPair:
    # Astraios's format: "Question: {prompt}\n\nAnswer: {completion}".
    return TextPair(f"Question: {r['prompt']}\n\nAnswer: ", r["completion"], "commits")


def _glue_sentence(r: dict, template: str) -> LabelledText:
    return LabelledText(r["sentence"], int(r["label"]), "all")


def _defect(r: dict, template: str) -> LabelledText:
    return LabelledText(r["func"], int(bool(r["target"])), str(r["project"]))


def _owner(repo: str) -> str:
    return repo.split("/")[0] if repo else "unknown"


def _code_to_text(r: dict, template: str) -> TextPair:
    code = " ".join(r["code_tokens"])
    prompt = format_prompt(f"Summarise this function in one sentence.\n\n{code}", template)
    return TextPair(prompt, " ".join(r["docstring_tokens"]), _owner(r["repo"]))


def _completion(r: dict, template: str) -> TextPair:
    return TextPair("", " ".join(r["code"]), "all")


def _clone_pair(r: dict, template: str) -> LabelledText:
    # BigCloneBench names no owner or project: one category for all rows.
    return LabelledText(r["func1"], int(bool(r["label"])), "all", text_b=r["func2"])


def _search_query(r: dict, template: str) -> TextPair:
    # AdvTest: the docstring's tokens are the query, the code's tokens (docstring removed) the candidate.
    return TextPair(" ".join(r["docstring_tokens"]), " ".join(r["code_tokens"]), _owner(r["repo"]))


SCHEMAS: dict[str, Schema] = {
    "dolly": Schema(
        "databricks/databricks-dolly-15k",
        None,
        "train",
        ("instruction", "context", "response", "category"),
        ("instruction",),
        _dolly,
    ),
    "guanaco-commits": Schema(
        "bigcode/guanaco-commits", None, "train", ("prompt", "completion"), ("instruction",), _guanaco
    ),
    "cola": Schema("nyu-mll/glue", "cola", "train", ("sentence", "label"), ("text_classification",), _glue_sentence),
    "sst2": Schema("nyu-mll/glue", "sst2", "train", ("sentence", "label"), ("text_classification",), _glue_sentence),
    "codexglue-defect": Schema(
        "google/code_x_glue_cc_defect_detection", None, "train", ("func", "target", "project"), ("defect",), _defect
    ),
    "codexglue-code-to-text": Schema(
        "google/code_x_glue_ct_code_to_text",
        "python",
        "train",
        ("code_tokens", "docstring_tokens", "repo"),
        ("code_to_text",),
        _code_to_text,
    ),
    "codexglue-completion": Schema(
        "google/code_x_glue_cc_code_completion_token", "python", "train", ("code",), ("completion",), _completion
    ),
    "codexglue-clone": Schema(
        "google/code_x_glue_cc_clone_detection_big_clone_bench",
        None,
        "train",
        ("func1", "func2", "label"),
        ("clone",),
        _clone_pair,
    ),
    "codexglue-search": Schema(
        "google/code_x_glue_tc_nl_code_search_adv",
        None,
        "train",
        ("docstring_tokens", "code_tokens", "repo"),
        ("code_search",),
        _search_query,
    ),
}
HUB_IDS = {s.hub_id + (f"/{s.hub_config}" if s.hub_config else ""): name for name, s in SCHEMAS.items()}


def resolve_schema(source: str, schema: str | None) -> tuple[str, Schema]:
    """The schema of ``data.source``: named by ``data.schema``, or implied by a known hub id."""
    name = schema or HUB_IDS.get(source)
    if name is None:
        raise DataSourceError(
            f"data.source={source!r} is neither 'stdlib', a known hub id ({', '.join(sorted(HUB_IDS))}) nor a "
            f"file with data.schema set; valid schemas: {', '.join(SCHEMAS)}"
        )
    if name not in SCHEMAS:
        raise DataSourceError(f"unknown data.schema {name!r}; valid: {', '.join(SCHEMAS)}")
    return name, SCHEMAS[name]


def _load_records(source: str, name: str, schema: Schema) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    if path.suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise DataSourceError(f"data.source {source!r}: no such file")
        table = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    elif HUB_IDS.get(source) != name:
        raise DataSourceError(
            f"data.source {source!r} is neither a local {', '.join(LOCAL_FORMATS)} file nor the hub id of the "
            f"{name!r} schema ({schema.hub_id}{'/' + schema.hub_config if schema.hub_config else ''})"
        )
    else:
        try:
            table = datasets.load_dataset(schema.hub_id, schema.hub_config, split=schema.hub_split)
        except Exception as err:  # offline, missing, or gated: all end the same way for the user
            raise DataSourceError(
                f"could not load {source!r} from the Hugging Face hub ({err.__class__.__name__}: {err}). "
                f"Without hub access, download it elsewhere and pass the file instead: "
                f"--set data.source=/path/to/file.jsonl (or .json, .csv, .parquet) --set data.schema=<schema>"
            ) from None
    return list(table)


def load_source_rows(
    source: str, schema_name: str | None, task: str, template: str
) -> list[TextPair] | list[LabelledText]:
    """Rows of a named dataset, checked against its schema and the task that will use them."""
    name, schema = resolve_schema(source, schema_name)
    if task not in schema.tasks:
        raise DataSourceError(f"data.task={task!r} cannot use the {name!r} schema; it feeds: {', '.join(schema.tasks)}")
    records = _load_records(source, name, schema)
    if not records:
        raise DataSourceError(f"data.source {source!r} has no rows")
    missing = [c for c in schema.columns if c not in records[0]]
    if missing:
        raise DataSourceError(
            f"data.source {source!r} lacks column(s) {missing} of the {name!r} schema; "
            f"it needs: {', '.join(schema.columns)} (found: {', '.join(records[0])})"
        )
    return [schema.to_row(r, template) for r in records]
