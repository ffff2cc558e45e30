"""Build a federated dataset: a global test split plus, per client, a fixed train and validation split.

Each client's rows are decided once, from the data generator, before round 1 (S0 re-sampled client
data every round; we never do)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fedpeft.data.instructions import rows_from_corpus, tokenize_rows
from fedpeft.data.partition import PartitionError, category_table, partition_iid, partition_shards
from fedpeft.data.stdlib_corpus import load_stdlib_corpus
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


def load_rows(source: str, modules: list[str] | None):
    if source != "stdlib":
        raise ValueError(f"unknown data.source {source!r}; valid: stdlib")
    records = load_stdlib_corpus(modules)
    if not records:
        raise PartitionError(f"data.modules={modules} matched no stdlib functions; check the module names")
    return rows_from_corpus(records)


def build_federated_data(
    *,
    tokenizer,
    source: str,
    modules: list[str] | None,
    max_rows: int | None,
    test_size: int,
    val_fraction: float,
    partition: str,
    shards_per_client: int,
    max_length: int,
    template: str,
    n_clients: int,
    rng: np.random.Generator,
) -> FederatedData:
    rows = load_rows(source, modules)
    order = rng.permutation(len(rows))
    if max_rows is not None:
        order = order[:max_rows]
    examples, dropped = tokenize_rows([rows[i] for i in order], tokenizer, max_length, template)
    if len(examples) <= test_size:
        raise PartitionError(
            f"only {len(examples)} usable rows (after data.max_rows and dropping {dropped} rows whose prompt "
            f"does not fit data.max_length={max_length}); need more than data.test_size={test_size}"
        )
    test, pool = examples[:test_size], examples[test_size:]
    if n_clients > len(pool):
        raise PartitionError(
            f"fl.clients={n_clients} is more than the {len(pool)} training rows; "
            f"use at most {len(pool)} clients, a smaller data.test_size or more rows (data.max_rows)"
        )
    categories = [e.category for e in pool]
    if partition == "iid":
        parts = partition_iid(len(pool), n_clients, rng)
    elif partition == "shards":
        parts = partition_shards(categories, n_clients, shards_per_client, rng)
    else:
        raise ValueError(f"unknown data.partition {partition!r}; valid: iid, shards")
    clients = []
    for cid, idx in enumerate(parts):
        local = [pool[i] for i in rng.permutation(idx)]
        n_val = int(round(val_fraction * len(local))) if val_fraction > 0 else 0
        n_val = min(max(n_val, 1 if val_fraction > 0 else 0), len(local) - 1)
        if len(local) - n_val < 1:
            raise PartitionError(
                f"client-{cid} has {len(local)} rows, too few to train; use fewer clients (fl.clients) or more rows"
            )
        clients.append(ClientData(client_id=cid, train=local[n_val:], val=local[:n_val]))
    report = {
        "rows_total": len(rows),
        "rows_used": len(examples),
        "rows_dropped_too_long": dropped,
        "test_rows": len(test),
        "partition": partition,
        "clients": {f"client-{c.client_id}": {"train": len(c.train), "val": len(c.val)} for c in clients},
        "categories": category_table(categories, parts),
    }
    return FederatedData(test=test, clients=clients, report=report)
