"""Build a federated dataset: a global test split plus, per client, a fixed train and validation split.

Each client's rows are decided once, from the data generator, before round 1 (S0 re-sampled client
data every round; we never do)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fedpeft.data.partition import PartitionError, category_table, partition_rows
from fedpeft.data.sources import DataSourceError, load_source_rows
from fedpeft.data.stdlib_corpus import load_stdlib_corpus
from fedpeft.data.tasks import TASKS, get_task, rows_for_task
from fedpeft.data.tasks.common import LabelledText, tokenize_task_rows
from fedpeft.tensors.batching import TokenizedExample


@dataclass
class ClientData:
    client_id: int
    train: list[TokenizedExample]
    val: list[TokenizedExample]

    @property
    def categories(self) -> dict[str, int]:
        return dict(Counter(e.category for e in self.train + self.val))


@dataclass
class FederatedData:
    test: list[TokenizedExample]
    clients: list[ClientData]
    report: dict = field(default_factory=dict)
    """Row counts, dropped rows and the clients x categories table; written to partition.json."""
    distractors: list[TokenizedExample] = field(default_factory=list)
    """Retrieval tasks: extra candidate codes (the response part) that test queries are ranked against."""
    server: list[TokenizedExample] = field(default_factory=list)
    """Public rows the server holds (``data.server_fraction``): FedKD's teacher and distillation data, the
    reference set of dynamic-token trust weights."""


def load_rows(
    source: str,
    modules: list[str] | None,
    task: str = "instruction",
    template: str = "alpaca",
    schema: str | None = None,
):
    """Task rows from the stdlib corpus or a named dataset; labels are checked against the task."""
    if source != "stdlib":
        rows = load_source_rows(source, schema, task, template)
        bad = out_of_range_label(rows, task)
        if bad:
            raise DataSourceError(f"data.source {source!r}: label {bad[1]} is outside 0..{bad[2] - 1} for {task}")
        return rows
    records = load_stdlib_corpus(modules)
    if not records:
        raise PartitionError(f"data.modules={modules} matched no stdlib functions; check the module names")
    return rows_for_task(task, records, template)


def out_of_range_label(rows: list, task: str) -> tuple[int, int, int | None] | None:
    """(row index, label, the task's number of labels) of the first labelled row whose label the task has no
    class for; None when every label fits (or no row is labelled)."""
    n_labels = get_task(task).num_labels if task in TASKS else None
    for index, row in enumerate(rows):
        if isinstance(row, LabelledText) and not 0 <= row.label < (n_labels or 0):
            return index, row.label, n_labels
    return None


def validation_count(n_rows: int, val_fraction: float) -> int:
    """How many of a client's ``n_rows`` rows are its validation rows: ``val_fraction`` of them, rounded, at
    least one when the fraction is positive, and never all of them."""
    n_val = int(round(val_fraction * n_rows)) if val_fraction > 0 else 0
    return min(max(n_val, 1 if val_fraction > 0 else 0), n_rows - 1)


def split_client(
    client_id: int, pool: list[TokenizedExample], idx: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> ClientData:
    """A client's rows ``pool[idx]`` in an order drawn from ``rng``; the first :func:`validation_count` of
    them are its validation rows, the rest its training rows. The one rule for every way clients get rows."""
    local = [pool[i] for i in rng.permutation(idx)]
    n_val = validation_count(len(local), val_fraction)
    return ClientData(client_id=client_id, train=local[n_val:], val=local[:n_val])


def check_row_counts(rows: list, source: str, test_size: int, max_rows: int | None, n_clients: int) -> None:
    """Before anything is tokenized: rows enough for the test split and for one per client? Tokenizing only
    drops rows, so this finds too few early and a later check may still find too few. Mirrors the split of
    :func:`build_federated_data`: a source without a test split gives up to 2 x ``test_size`` rows to it."""
    where = f"data.source {source!r}" if source != "stdlib" else "the stdlib corpus (data.modules)"
    n_train = sum(r.split == "train" for r in rows)
    n_test = sum(r.split == "test" for r in rows)
    held_out = ""
    if n_test == 0:
        n_test = min(2 * test_size, n_train)
        n_train -= n_test
        held_out = f" once {n_test} go to the test split (up to 2 x data.test_size)"
    if n_test < test_size:
        counted = f"{n_test} test-split rows" if not held_out else f"{len(rows)} row(s)"
        raise PartitionError(
            f"{where} has {counted}, fewer than data.test_size={test_size}; lower data.test_size or add rows"
        )
    n_pool = min(n_train, max_rows) if max_rows else n_train
    if n_clients > n_pool:
        raise PartitionError(
            f"fl.clients={n_clients} is more than the {n_pool} training rows {where} has{held_out}; use at most "
            f"{n_pool} clients or more rows (data.max_rows, a smaller data.test_size)"
        )


def build_federated_data(
    *,
    tokenizer,
    source: str,
    task: str,
    modules: list[str] | None,
    schema: str | None,
    max_rows: int | None,
    test_size: int,
    val_fraction: float,
    partition: str,
    shards_per_client: int,
    dirichlet_alpha: float,
    quantity_range: tuple[float, float],
    min_client_size: int,
    max_length: int,
    template: str,
    n_clients: int,
    rng: np.random.Generator,
    retrieval_candidates: int = 0,
    server_fraction: float = 0.0,
    server_split: str = "held_out",
    rows: list | None = None,
    partition_key: str = "category",
) -> FederatedData:
    """Global test rows come from the corpus 'test' split (never seen in pretraining); client rows from
    'train'. ``max_rows`` caps the client pool; ``test_size`` the test rows. For retrieval tasks,
    ``retrieval_candidates`` sizes the pool each test query is ranked in (see :func:`retrieval_distractors`).
    ``server_fraction`` (of the client pool's size) goes to the server: rows no client holds (``held_out``:
    beyond ``max_rows`` where there are enough, else taken out of the pool) or a sample of the clients'
    training rows (``shared``). ``rows``: what :func:`load_rows` returns for these arguments, if the caller
    has already loaded (and checked) them."""
    if server_split not in ("held_out", "shared"):
        raise ValueError(f"unknown data.server_split {server_split!r}; valid: held_out, shared")
    tokenize = get_task(task).tokenize
    if rows is None:
        rows = load_rows(source, modules, task, template, schema)
    test_rows = [rows[i] for i in rng.permutation(len(rows)) if rows[i].split == "test"]
    pool_rows = [rows[i] for i in rng.permutation(len(rows)) if rows[i].split == "train"]
    if not test_rows:
        # A source without its own test split: hold out 2 x test_size random rows (some may be too long).
        test_rows, pool_rows = pool_rows[: 2 * test_size], pool_rows[2 * test_size :]
    test, dropped_test = tokenize(test_rows, tokenizer, max_length)
    if len(test) < test_size:
        raise PartitionError(
            f"data.test_size={test_size} but only {len(test)} test-split rows fit data.max_length={max_length} "
            f"({dropped_test} too long); lower data.test_size or raise data.max_length"
        )
    test, unused_test = test[:test_size], test[test_size:]
    client_rows = pool_rows[:max_rows] if max_rows else pool_rows
    pool, dropped = tokenize(client_rows, tokenizer, max_length)
    n_server = int(round(server_fraction * len(pool)))
    if server_fraction > 0 and n_server == 0:
        raise PartitionError(
            f"data.server_fraction={server_fraction} of {len(pool)} training rows is no row; raise it or add rows"
        )
    server: list[TokenizedExample] = []
    spare_end = len(pool_rows)
    server_from = "clients' rows" if server_split == "shared" else None
    if server_split == "held_out" and n_server:
        # Rows beyond data.max_rows first, from the end of the spare rows (retrieval distractors come from
        # their start), so the clients keep exactly the rows they would have without a server; if there are
        # not enough, the head of the (seeded, shuffled) client pool, and the report says so.
        spare_rows = pool_rows[max(len(client_rows), len(pool_rows) - 2 * n_server) :]
        spare = tokenize(spare_rows, tokenizer, max_length)[0] if spare_rows else []
        if len(spare) >= n_server:
            server, spare_end, server_from = spare[:n_server], len(pool_rows) - len(spare_rows), "beyond data.max_rows"
        else:
            server, pool, server_from = pool[:n_server], pool[n_server:], "taken out of the client pool"
    if n_clients > len(pool):
        raise PartitionError(
            f"fl.clients={n_clients} is more than the {len(pool)} training rows (after dropping {dropped} rows "
            f"that do not fit data.max_length={max_length}); use at most {len(pool)} clients or more "
            f"rows (data.max_rows, data.modules)"
        )
    if partition_key == "label" and any(e.label < 0 for e in pool):
        raise PartitionError(
            f"data.partition_key=label splits by each row's class label, but data.task={task} has no labels "
            "(classification tasks do: defect, clone, text_classification); use data.partition_key=category"
        )
    categories = [str(e.label) if partition_key == "label" else e.category for e in pool]
    parts = partition_rows(
        partition,
        categories,
        n_clients,
        rng,
        shards_per_client=shards_per_client,
        dirichlet_alpha=dirichlet_alpha,
        quantity_range=quantity_range,
        min_size=min_client_size,
    )
    clients = [split_client(cid, pool, idx, val_fraction, rng) for cid, idx in enumerate(parts)]
    if server_split == "shared" and n_server:
        union = [e for c in clients for e in c.train]
        server = [union[i] for i in rng.choice(len(union), size=min(n_server, len(union)), replace=False)]
    report = {
        "rows_total": len(rows),
        "rows_used": len(pool) + len(test),
        "rows_dropped_too_long": dropped,
        "test_rows": len(test),
        "server_rows": len(server),
        "server_split": server_split,
        "server_rows_from": server_from if server else None,
        "partition": partition,
        "clients": {f"client-{c.client_id}": {"train": len(c.train), "val": len(c.val)} for c in clients},
        "categories": category_table(categories, parts),
    }
    distractors = []
    if get_task(task).head == "embedding":
        spare = [r for r in rows if r.split == "valid"] + pool_rows[len(client_rows) : spare_end]
        distractors = retrieval_distractors(unused_test, spare, tokenizer, max_length, retrieval_candidates - len(test))
        report["retrieval_candidates"] = len(test) + len(distractors)
    return FederatedData(test=test, clients=clients, report=report, distractors=distractors, server=server)


def retrieval_distractors(
    unused_test: list[TokenizedExample], spare_rows: list, tokenizer, max_length: int, n: int
) -> list[TokenizedExample]:
    """Up to ``n`` distractor codes for retrieval: test-split rows not used as queries first, then rows
    no client trains on (the validation split, training rows beyond ``data.max_rows``). CodeXGLUE ranks
    each query against the whole test set; a pool the size of the test queries alone is too easy."""
    wanted = spare_rows[: max(0, n - len(unused_test))]
    extra = tokenize_task_rows(wanted, tokenizer, max_length)[0] if wanted else []
    return (unused_test + extra)[: max(n, 0)]
