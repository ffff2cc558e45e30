"""Split row indices across clients. Pure functions of (rows, clients, generator)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PARTITIONERS = ("iid", "shards")


class PartitionError(ValueError):
    pass


def partition_iid(n_rows: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then cut into ``n_clients`` nearly equal parts."""
    _check_enough_rows(n_rows, n_clients)
    return [np.sort(part) for part in np.array_split(rng.permutation(n_rows), n_clients)]


def partition_shards(
    categories: Sequence[str], n_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shepherd's pathological non-IID split: sort rows by category, cut them into
    ``n_clients * shards_per_client`` contiguous shards, and give each client ``shards_per_client``
    shards drawn at random without replacement."""
    n_rows = len(categories)
    n_shards = n_clients * shards_per_client
    if n_rows < n_shards:
        raise PartitionError(
            f"{n_rows} training rows cannot be cut into {n_shards} shards ({n_clients} clients x "
            f"{shards_per_client} shards); use fewer clients, fewer shards_per_client or more rows"
        )
    order = np.array(sorted(range(n_rows), key=lambda i: (categories[i], i)))
    shards = np.array_split(order, n_shards)
    picks = rng.permutation(n_shards)
    return [
        np.sort(np.concatenate([shards[s] for s in picks[c * shards_per_client : (c + 1) * shards_per_client]]))
        for c in range(n_clients)
    ]


def _check_enough_rows(n_rows: int, n_clients: int) -> None:
    if n_clients > n_rows:
        raise PartitionError(
            f"fl.clients={n_clients} is more than the {n_rows} training rows; use at most {n_rows} clients or more data"
        )


def category_table(categories: Sequence[str], parts: Sequence[np.ndarray]) -> dict[str, dict[str, int]]:
    """client -> category -> row count, for the partition report."""
    table: dict[str, dict[str, int]] = {}
    for c, idx in enumerate(parts):
        counts: dict[str, int] = {}
        for i in idx:
            counts[categories[i]] = counts.get(categories[i], 0) + 1
        table[f"client-{c}"] = dict(sorted(counts.items()))
    return table
