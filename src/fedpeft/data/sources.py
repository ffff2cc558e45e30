"""Real datasets by name: published schemas, loaded from the hub or from a local JSON, JSONL, CSV or
Parquet file in the same schema, and turned into the rows fedpeft's tasks use.

``data.source`` is ``stdlib`` (the built-in corpus), a hub id listed below, or a local file; a local
file says its schema with ``data.schema``. The file, its columns and the type of every value are checked
before anything is tokenized (or a model loaded): a problem names the file, the row and the column.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.data.tasks.common import LabelledText, TextPair, format_prompt
from fedpeft.errors import FedpeftError

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class DataSourceError(FedpeftError, ValueError):
    """``data.source`` cannot be read or does not fit its schema or task; the message names the file."""


@dataclass(frozen=True)
class Column:
    """What every value of a schema's column must be."""

    accepts: Callable[[Any], bool]
    description: str


def _integral(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


TEXT = Column(lambda v: isinstance(v, str), "a string")
OPTIONAL_TEXT = Column(lambda v: v is None or isinstance(v, str), "a string or null")
TOKENS = Column(lambda v: isinstance(v, list) and all(isinstance(t, str) for t in v), "a list of strings")
BINARY = Column(lambda v: isinstance(v, bool) or (_integral(v) and v in (0, 1)), "true/false or 0/1")
CLASS_ID = Column(lambda v: not isinstance(v, bool) and _integral(v) and v >= 0, "a class id (an integer >= 0)")


@dataclass(frozen=True)
class Schema:
    hub_id: str
    hub_config: str | None
    hub_split: str
    columns: Mapping[str, Column]
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
        {"instruction": TEXT, "context": OPTIONAL_TEXT, "response": TEXT, "category": TEXT},
        ("instruction",),
        _dolly,
    ),
    "guanaco-commits": Schema(
        "bigcode/guanaco-commits", None, "train", {"prompt": TEXT, "completion": TEXT}, ("instruction",), _guanaco
    ),
    "cola": Schema(
        "nyu-mll/glue", "cola", "train", {"sentence": TEXT, "label": CLASS_ID}, ("text_classification",), _glue_sentence
    ),
    "sst2": Schema(
        "nyu-mll/glue", "sst2", "train", {"sentence": TEXT, "label": CLASS_ID}, ("text_classification",), _glue_sentence
    ),
    "codexglue-defect": Schema(
        "google/code_x_glue_cc_defect_detection",
        None,
        "train",
        {"func": TEXT, "target": BINARY, "project": TEXT},
        ("defect",),
        _defect,
    ),
    "codexglue-code-to-text": Schema(
        "google/code_x_glue_ct_code_to_text",
        "python",
        "train",
        {"code_tokens": TOKENS, "docstring_tokens": TOKENS, "repo": OPTIONAL_TEXT},
        ("code_to_text",),
        _code_to_text,
    ),
    "codexglue-completion": Schema(
        "google/code_x_glue_cc_code_completion_token", "python", "train", {"code": TOKENS}, ("completion",), _completion
    ),
    "codexglue-clone": Schema(
        "google/code_x_glue_cc_clone_detection_big_clone_bench",
        None,
        "train",
        {"func1": TEXT, "func2": TEXT, "label": BINARY},
        ("clone",),
        _clone_pair,
    ),
    "codexglue-search": Schema(
        "google/code_x_glue_tc_nl_code_search_adv",
        None,
        "train",
        {"docstring_tokens": TOKENS, "code_tokens": TOKENS, "repo": OPTIONAL_TEXT},
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


def _check_local_file(source: str, path: Path, kind: str) -> None:
    """A file that exists and is not empty; a text one is also read through by :func:`_check_text`."""
    try:
        if path.is_dir():
            raise DataSourceError(f"data.source {source!r} is a directory, not a {path.suffix} file")
        if not path.is_file():
            raise DataSourceError(f"data.source {source!r}: no such file")
        if path.stat().st_size == 0:
            raise DataSourceError(f"data.source {source!r} is empty")
        if kind != "parquet":
            _check_text(source, path)
    except OSError as err:  # a name the file system refuses (too long), or a file it cannot read
        raise DataSourceError(f"data.source {source!r}: {err.strerror or err}") from None


def _check_text(source: str, path: Path) -> None:
    """A text file is UTF-8 without NUL bytes, and JSON rows are objects: every line of a .jsonl file is one, a
    .json file opens an array of them (or holds one per line). Checked line by line, so the message names
    the line before any parser reads the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    opened = False
    with path.open("rb") as fh:
        for number, line in enumerate(fh, 1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError:
                raise DataSourceError(
                    f"data.source {source!r} line {number} is not UTF-8 text; save the file as UTF-8"
                ) from None
            if b"\x00" in line:
                raise DataSourceError(
                    f"data.source {source!r} line {number} holds NUL bytes (UTF-16 text, or not text at all); "
                    "save the file as UTF-8"
                )
            row = (line.removeprefix(codecs.BOM_UTF8) if number == 1 else line).strip()
            shown = repr(row[:24].decode(errors="replace"))
            if row and path.suffix == ".jsonl" and not row.startswith(b"{"):
                raise DataSourceError(
                    f"data.source {source!r} line {number} ({shown}) is not a JSON object: each line of a .jsonl "
                    f'file is one row, {{"column": value, ...}}'
                )
            if row and path.suffix == ".json" and not opened and not row.startswith((b"[", b"{")):
                raise DataSourceError(
                    f"data.source {source!r} opens with {shown}, not an array of rows: a .json file holds "
                    f'[{{"column": value, ...}}, ...] (or one such object per line)'
                )
            opened = opened or bool(row)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataSourceError(f"data.source {source!r} ends inside a UTF-8 character; save it as UTF-8") from None


def _root_cause(err: BaseException) -> str:
    """The first message in an exception chain that is not the ``datasets`` wrapper's, on one short line."""
    seen = err
    while seen is not None:
        text = " ".join(str(seen).split())
        if text and not type(seen).__module__.startswith("datasets"):
            return f"{type(seen).__name__}: {text[:300]}"
        seen = seen.__cause__ or seen.__context__
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300] or 'no rows could be read'}"


def _read_json_rows(source: str, path: Path) -> list[dict[str, Any]]:
    """The rows of a .json (an array of objects, or one object per line) or .jsonl file, parsed by Python's
    own ``json``: pyarrow's JSON reader, which ``datasets`` uses, has crashed the whole process on hostile
    files (a row of ``null``; other inputs with datasets 3.0), and a crash is not an error message."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # one object per line, as datasets also reads a .json file
        if isinstance(whole, list):
            bad = next((i for i, r in enumerate(whole) if not isinstance(r, dict)), None)
            if bad is not None:
                raise DataSourceError(
                    f"data.source {source!r} item {bad + 1} of its array is {type(whole[bad]).__name__}, not an "
                    'object: a .json file holds [{"column": value, ...}, ...]'
                )
            return whole
        if isinstance(whole, dict):
            return [whole]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataSourceError(
                f"data.source {source!r} line {number} is not valid JSON ({err.msg} at column {err.colno})"
            ) from None
        if not isinstance(row, dict):
            raise DataSourceError(
                f"data.source {source!r} line {number} is {type(row).__name__}, not a JSON object: each line is "
                'one row, {"column": value, ...}'
            )
        rows.append(row)
    return rows


def _read_local(source: str, path: Path, kind: str):
    """The rows of a local file: JSON by :func:`_read_json_rows`, CSV and Parquet through ``datasets`` with
    its logging silenced (the error says it all)."""
    if kind == "json":
        return _read_json_rows(source, path)
    import datasets
    from datasets.utils import logging as datasets_logging

    verbosity = datasets_logging.get_verbosity()
    datasets_logging.set_verbosity(datasets_logging.CRITICAL + 10)
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # every parser's failure means the same to the user: the file is not readable
        raise DataSourceError(
            f"data.source {source!r} is not a readable {path.suffix} file ({_root_cause(err)})"
        ) from None
    finally:
        datasets_logging.set_verbosity(verbosity)


def _load_records(source: str, name: str, schema: Schema) -> list[dict[str, Any]]:
    import datasets

    datasets.disable_progress_bars()
    path = Path(source).expanduser()
    if path.suffix in LOCAL_FORMATS:
        _check_local_file(source, path, LOCAL_FORMATS[path.suffix])
        table = _read_local(source, path, LOCAL_FORMATS[path.suffix])
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
            f"it needs: {', '.join(schema.columns)} (found: {', '.join(map(str, records[0]))[:300]})"
        )
    check_values(source, name, schema, records)
    return [schema.to_row(r, template) for r in records]


def check_values(source: str, name: str, schema: Schema, records: list[dict[str, Any]]) -> None:
    """Every value of every schema column is of its column's kind; the first bad one is named with its row."""
    for column_name, column in schema.columns.items():
        bad = [i for i, r in enumerate(records) if not column.accepts(r.get(column_name))]
        if bad:
            value = records[bad[0]].get(column_name)
            shown = "null" if value is None else repr(value)
            shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
            more = f" (and {len(bad) - 1} more row(s))" if len(bad) > 1 else ""
            raise DataSourceError(
                f"data.source {source!r} row {bad[0] + 1}{more}: column {column_name!r} is {shown}; the "
                f"{name!r} schema needs {column.description}"
            )
