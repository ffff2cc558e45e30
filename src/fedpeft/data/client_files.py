"""Each client's rows from its own file: one function for a SuperNode given its data file and for a rehearsal
on one machine with ``data.client_files``, so node i computes exactly what client i of the rehearsal does.

Notable choices:
- Files are read and checked by :func:`fedpeft.data.sources.load_source_rows` (same formats, schemas and
  value checks as ``data.source``); its messages are re-addressed to the caller's ``where`` ("node 3's
  data-file '/srv/x.jsonl'", "data.client_files[2] 'b.jsonl'").
- ``redact=True`` (a node: the message travels to the server) rebuilds each message from its parts that
  cannot hold the file's content (line and row numbers, the schema's column names, the kind of problem);
  a message of a shape not known here is replaced by a generic one rather than passed on.
- Client i's validation rows are carved with ``numpy_rng(seed, "data", i)`` by
  :func:`fedpeft.data.federated.split_client`, the rule the seeded partition uses; no partition is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpeft.data.federated import (
    ClientData,
    FederatedData,
    out_of_range_label,
    retrieval_distractors,
    split_client,
    validation_count,
)
from fedpeft.data.source_messages import readdressed
from fedpeft.data.sources import LOCAL_FORMATS, SCHEMAS, DataSourceError, load_source_rows
from fedpeft.data.tasks import get_task
from fedpeft.seeding import numpy_rng

FORMATS = ", ".join(LOCAL_FORMATS)


def _check_file(path: Path, where: str, allow_hub: bool) -> None:
    """A local file (by its ending) exists and holds something; anything else is a hub id, where allowed."""
    if path.suffix not in LOCAL_FORMATS:
        if allow_hub:
            return
        raise DataSourceError(f"{where} is not a local {FORMATS} file; name the file with one of those endings")
    try:
        if path.is_dir():
            raise DataSourceError(f"{where} is a directory, not a {path.suffix} file")
        if not path.is_file():
            raise DataSourceError(f"{where}: no such file; check the path")
        if path.stat().st_size == 0:
            raise DataSourceError(f"{where} is empty (0 bytes); it must hold the client's rows")
    except OSError as err:  # a name the file system refuses (too long), or a file it cannot read
        raise DataSourceError(f"{where}: {err.strerror or type(err).__name__}") from None


def _check_schema(schema: str | None, task: str, where: str, schema_key: str) -> str:
    if schema is None:
        raise DataSourceError(f"{where}: set {schema_key} to the file's schema; valid: {', '.join(SCHEMAS)}")
    if schema not in SCHEMAS:
        raise DataSourceError(f"{where}: unknown {schema_key} {schema!r}; valid: {', '.join(SCHEMAS)}")
    if task not in SCHEMAS[schema].tasks:
        feeds = [name for name, s in SCHEMAS.items() if task in s.tasks]
        raise DataSourceError(
            f"{where}: the {schema!r} schema feeds {', '.join(SCHEMAS[schema].tasks)}, not data.task={task}; "
            f"a file for {task} is in: {', '.join(feeds) or 'no published schema'}"
        )
    return schema


def load_file_rows(
    source: str,
    schema: str | None,
    task: str,
    template: str,
    where: str,
    *,
    redact: bool = False,
    schema_key: str = "data.schema",
    allow_hub: bool = False,
) -> list:
    """:func:`load_client_rows`, where ``allow_hub`` also takes a hub id of the schema (the server's own test
    rows)."""
    schema = _check_schema(schema, task, where, schema_key)
    _check_file(Path(source).expanduser(), where, allow_hub)
    try:
        rows = load_source_rows(source, schema, task, template)
    except DataSourceError as err:
        raise readdressed(err, source, where, schema, redact) from None
    bad = out_of_range_label(rows, task)
    if bad:
        index, label, n_labels = bad
        shown = "" if redact else f" {label}"
        raise DataSourceError(
            f"{where} row {index + 1}: label{shown} is outside 0..{(n_labels or 0) - 1}, the classes of "
            f"data.task={task}; is this a file for another task?"
        )
    return rows


def load_client_rows(
    path: str,
    schema: str | None,
    task: str,
    template: str,
    where: str,
    *,
    redact: bool = False,
    schema_key: str = "data.schema",
) -> list:
    """The rows of one client's local file (.json, .jsonl, .csv, .parquet) in the published ``schema``, every
    value checked against the schema and ``task``. Every problem is a :class:`DataSourceError` whose message
    starts with ``where`` and says what would be valid; with ``redact`` it holds no value or text of the file
    (file name, line or row number, column name and the kind of problem only). ``schema_key`` is the setting
    that names the schema, for the message when it is missing or unknown."""
    return load_file_rows(path, schema, task, template, where, redact=redact, schema_key=schema_key)


def _require_rows(
    n_train: int, n_val: int, dropped: int, carved: bool, batch_size: int, max_length: int, where: str
) -> None:
    """A client has at least one batch of training rows, or the message says what to change."""
    if n_train >= batch_size:
        return
    if n_train == 0 and n_val == 0:
        raise DataSourceError(
            f"{where}: none of its {dropped} row(s) fits data.max_length={max_length}; raise data.max_length or "
            "shorten the rows"
        )
    detail = f" once {n_val} go to validation" if carved and n_val else ""
    if dropped:
        detail += f"{' and' if detail else ''} after dropping {dropped} too long for data.max_length={max_length}"
    fixes = "add rows or lower train.batch_size" + (" or data.val_fraction" if carved and n_val else "")
    raise DataSourceError(
        f"{where} has {n_train} training row(s){detail}, fewer than one batch of train.batch_size={batch_size}; {fixes}"
    )


def check_client_row_count(n_rows: int, has_eval: bool, val_fraction: float, batch_size: int, where: str) -> None:
    """Before tokenizing (which only drops rows): does the file give at least one batch of training rows once
    its validation rows are carved? :func:`build_client_data` checks again after tokenizing."""
    n_val = 0 if has_eval else validation_count(n_rows, val_fraction)
    _require_rows(n_rows - n_val, n_val, 0, not has_eval, batch_size, 0, where)


def build_client_data(
    client_id: int,
    rows: Sequence[Any],
    eval_rows: Sequence[Any] | None,
    tokenizer: Any,
    task: str,
    val_fraction: float,
    max_length: int,
    rng: np.random.Generator,
    batch_size: int,
    where: str,
) -> ClientData:
    """One client's tokenized rows: its training rows from ``rows`` in an order drawn from ``rng``, and as
    validation rows ``eval_rows`` if given, else ``val_fraction`` of ``rows`` carved with ``rng`` (the rule of
    the seeded split, :func:`~fedpeft.data.federated.split_client`). Rows too long for ``max_length`` are
    dropped; fewer training rows than one ``batch_size`` batch is a :class:`DataSourceError` naming ``where``.
    On a node, ``rng`` is ``numpy_rng(seed, "data", client_id)``, as :func:`build_file_federation` uses."""
    tokenize = get_task(task).tokenize
    examples, dropped = tokenize(list(rows), tokenizer, max_length) if rows else ([], 0)
    carved = eval_rows is None
    if not examples:
        _require_rows(0, 0, dropped, carved, batch_size, max_length, where)
    client = split_client(client_id, examples, np.arange(len(examples)), val_fraction if carved else 0.0, rng)
    if not carved:
        val, dropped_val = tokenize(list(eval_rows), tokenizer, max_length) if eval_rows else ([], 0)
        if not val:
            raise DataSourceError(
                f"{where}: none of its {dropped_val} validation row(s) fits data.max_length={max_length}; raise "
                "data.max_length or shorten them"
            )
        client = ClientData(client_id=client_id, train=client.train, val=val)
    _require_rows(len(client.train), len(client.val), dropped, carved, batch_size, max_length, where)
    return client


def client_file_where(index: int, path: str, key: str = "data.client_files") -> str:
    """How messages name client ``index``'s file in a rehearsal: ``data.client_files[2] 'b.jsonl'``."""
    return f"{key}[{index}] {path!r}"


@dataclass(frozen=True)
class ClientRows:
    """One client's rows as read from its files and checked, not yet tokenized."""

    rows: list
    eval_rows: list | None
    """From its eval file; None: validation rows are carved from ``rows``."""


@dataclass(frozen=True)
class FileFederationRows:
    """Everything a ``data.client_files`` run reads before the tokenizer exists."""

    clients: list[ClientRows]
    server_test: list
    """The server's own test rows (``data.server_source``); empty when it has none."""


def load_file_federation_rows(
    *,
    files: Sequence[str],
    eval_files: Sequence[str] | None,
    schema: str | None,
    task: str,
    template: str,
    val_fraction: float,
    batch_size: int,
    server_source: str | None = None,
    server_schema: str | None = None,
) -> FileFederationRows:
    """Read and check every client's files (and the server's test rows), and that each client has a batch of
    training rows: every data problem a ``data.client_files`` run can have that needs no tokenizer."""
    if eval_files is not None and len(eval_files) != len(files):
        raise DataSourceError(
            f"data.client_eval_files has {len(eval_files)} file(s) for {len(files)} data.client_files; give one per "
            "client, in the same order"
        )
    clients = []
    for i, path in enumerate(files):
        where = client_file_where(i, path)
        rows = load_client_rows(path, schema, task, template, where)
        eval_rows = None
        if eval_files is not None:
            eval_path = eval_files[i]
            eval_rows = load_client_rows(
                eval_path, schema, task, template, client_file_where(i, eval_path, "data.client_eval_files")
            )
        check_client_row_count(len(rows), eval_rows is not None, val_fraction, batch_size, where)
        clients.append(ClientRows(rows, eval_rows))
    server_test = []
    if server_source is not None:
        server_test = load_file_rows(
            server_source,
            server_schema,
            task,
            template,
            f"data.server_source {server_source!r}",
            schema_key="data.server_schema",
            allow_hub=True,
        )
    return FileFederationRows(clients, server_test)


def build_file_federation(
    *,
    tokenizer: Any,
    files: Sequence[str],
    eval_files: Sequence[str] | None,
    schema: str | None,
    task: str,
    template: str,
    val_fraction: float,
    max_length: int,
    batch_size: int,
    seed: int,
    test_size: int,
    server_source: str | None = None,
    server_schema: str | None = None,
    retrieval_candidates: int = 0,
    rows: FileFederationRows | None = None,
) -> FederatedData:
    """The federated data of a ``data.client_files`` run: client i from ``files[i]`` (and ``eval_files[i]``)
    by :func:`build_client_data` with ``numpy_rng(seed, "data", i)``, exactly what a node given that file
    computes for client i; no partition. ``test``: the first ``test_size`` rows of ``server_source`` that fit
    ``max_length``, in file order (empty without one). ``rows``: :func:`load_file_federation_rows` of these
    arguments, if already loaded. The report has partition.json's keys (partition ``client_files``)."""
    if rows is None:
        rows = load_file_federation_rows(
            files=files,
            eval_files=eval_files,
            schema=schema,
            task=task,
            template=template,
            val_fraction=val_fraction,
            batch_size=batch_size,
            server_source=server_source,
            server_schema=server_schema,
        )
    clients = [
        build_client_data(
            i,
            loaded.rows,
            loaded.eval_rows,
            tokenizer,
            task,
            val_fraction,
            max_length,
            numpy_rng(seed, "data", i),
            batch_size,
            client_file_where(i, files[i]),
        )
        for i, loaded in enumerate(rows.clients)
    ]
    tokenize = get_task(task).tokenize
    test, dropped_test = tokenize(rows.server_test, tokenizer, max_length) if rows.server_test else ([], 0)
    if rows.server_test and not test:
        raise DataSourceError(
            f"data.server_source {server_source!r}: none of its {dropped_test} row(s) fits data.max_length="
            f"{max_length}; raise data.max_length"
        )
    test, unused_test = test[:test_size], test[test_size:]
    n_read = [len(c.rows) + len(c.eval_rows or []) for c in rows.clients]
    n_kept = [len(c.train) + len(c.val) for c in clients]
    report = {
        "rows_total": sum(n_read) + len(rows.server_test),
        "rows_used": sum(n_kept) + len(test),
        "rows_dropped_too_long": sum(n_read) - sum(n_kept),
        "test_rows": len(test),
        "server_rows": 0,
        "server_split": None,
        "server_rows_from": None,
        "partition": "client_files",
        "clients": {f"client-{c.client_id}": {"train": len(c.train), "val": len(c.val)} for c in clients},
        "categories": {f"client-{c.client_id}": dict(sorted(c.categories.items())) for c in clients},
    }
    distractors = []
    if get_task(task).head == "embedding" and test:
        distractors = retrieval_distractors(unused_test, [], tokenizer, max_length, retrieval_candidates - len(test))
        report["retrieval_candidates"] = len(test) + len(distractors)
    return FederatedData(test=test, clients=clients, report=report, distractors=distractors)
