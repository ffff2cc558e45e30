"""Split row indices across clients. Pure functions of (rows, clients, generator) returning one sorted
index array per client.

Notable choices:
- Written here rather than taken from flwr-datasets: its partitioners work on Hugging Face ``Dataset``
  objects and version 0.6.1 pins ``datasets<5`` and ``rich<15``; ours are a few lines each over plain
  index arrays, which every data source already has.
- Every partitioner is followed by the same minimum-size check, which names the smallest client.
- Each scheme is registered in ``PARTITIONS`` (``data.partition``) as a function of the same shape,
  ``(categories, n_clients, rng, options) -> parts``; its docstring's first line is its summary. They are
  registered in the order ``data.partition`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedpeft.errors import FedpeftError
from fedpeft.registry import Registry


class PartitionError(FedpeftError, ValueError):
    """Rows cannot be split as configured (too few for the clients, a client below its minimum size)."""


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
            f"{n_rows} training rows cannot be cut into {n_shards} shards (fl.clients={n_clients} x "
            f"data.shards_per_client={shards_per_client}); lower either or add rows"
        )
    order = np.array(sorted(range(n_rows), key=lambda i: (categories[i], i)))
    shards = np.array_split(order, n_shards)
    picks = rng.permutation(n_shards)
    return [
        np.sort(np.concatenate([shards[s] for s in picks[c * shards_per_client : (c + 1) * shards_per_client]]))
        for c in range(n_clients)
    ]


def partition_dirichlet(
    categories: Sequence[str],
    n_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_attempts: int = 100,
) -> list[np.ndarray]:
    """Label skew: for each category, client shares are drawn from Dirichlet(alpha, ..., alpha) and the
    category's rows are cut in those proportions (small alpha: each category lives on few clients).
    Redrawn until every client has ``min_size`` rows, at most ``max_attempts`` times."""
    _check_enough_rows(len(categories), n_clients)
    if alpha <= 0:
        raise PartitionError(f"data.dirichlet_alpha must be > 0, got {alpha}")
    by_category = _rows_by_category(categories)
    parts: list[np.ndarray] = []
    for _ in range(max_attempts):
        buckets: list[list[int]] = [[] for _ in range(n_clients)]
        for rows in by_category.values():
            rows = rng.permutation(rows)
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for c, piece in enumerate(np.split(rows, cuts)):
                buckets[c].extend(piece.tolist())
        parts = [np.sort(np.array(b, dtype=np.int64)) for b in buckets]
        if min(len(p) for p in parts) >= min_size:
            return parts
    smallest = int(np.argmin([len(p) for p in parts]))
    raise PartitionError(
        f"Dirichlet(alpha={alpha}) split left client-{smallest} with {len(parts[smallest])} rows, below the "
        f"minimum of {min_size}, in {max_attempts} draws; use fewer clients (fl.clients), a larger "
        f"data.dirichlet_alpha or a smaller data.min_client_size"
    )


def partition_quantity(
    n_rows: int, n_clients: int, low: float, high: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """S0's quantity skew: after a shuffle, each client in turn takes a U(low, high) fraction of the rows
    still in the pool; the last client takes what is left."""
    _check_enough_rows(n_rows, n_clients)
    if not 0 < low <= high < 1:
        raise PartitionError(f"data.quantity_range must satisfy 0 < low <= high < 1, got [{low}, {high}]")
    pool = rng.permutation(n_rows)
    parts = []
    for c in range(n_clients - 1):
        # Leave at least one row for each client still to come.
        take = int(round(rng.uniform(low, high) * len(pool)))
        take = min(max(take, 1), len(pool) - (n_clients - 1 - c))
        parts.append(np.sort(pool[:take]))
        pool = pool[take:]
    parts.append(np.sort(pool))
    return parts


def partition_natural(categories: Sequence[str], n_clients: int) -> list[np.ndarray]:
    """Natural id: every category (module, project, repo owner) belongs to exactly one client. With more
    categories than clients, categories are packed largest first onto the client with the fewest rows."""
    by_category = _rows_by_category(categories)
    if len(by_category) < n_clients:
        raise PartitionError(
            f"natural partition needs at least one category per client: {len(by_category)} categories "
            f"for fl.clients={n_clients}; use at most {len(by_category)} clients"
        )
    buckets: list[list[int]] = [[] for _ in range(n_clients)]
    for _, rows in sorted(by_category.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        smallest = min(range(n_clients), key=lambda c: (len(buckets[c]), c))
        buckets[smallest].extend(rows)
    return [np.sort(np.array(b, dtype=np.int64)) for b in buckets]


def check_min_size(parts: Sequence[np.ndarray], min_size: int) -> None:
    sizes = [len(p) for p in parts]
    smallest = int(np.argmin(sizes))
    if sizes[smallest] < min_size:
        raise PartitionError(
            f"client-{smallest} has {sizes[smallest]} rows, below data.min_client_size={min_size}; "
            f"use fewer clients (fl.clients) or a smaller data.min_client_size"
        )


def _rows_by_category(categories: Sequence[str]) -> dict[str, np.ndarray]:
    out: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        out.setdefault(c, []).append(i)
    return {c: np.array(rows, dtype=np.int64) for c, rows in sorted(out.items())}


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


@dataclass(frozen=True)
class PartitionOptions:
    """The ``data.*`` settings the schemes read (each reads only its own)."""

    shards_per_client: int = 2
    dirichlet_alpha: float = 0.5
    quantity_range: tuple[float, float] = (0.03, 0.3)
    min_size: int = 1


Partitioner = Callable[[Sequence[str], int, np.random.Generator, PartitionOptions], list[np.ndarray]]
"""(row categories, clients, generator, options) -> one sorted index array per client."""

PARTITIONS: Registry[Partitioner] = Registry("partition", "data.partition")


@PARTITIONS.register("iid")
def _iid(
    categories: Sequence[str], n_clients: int, rng: np.random.Generator, options: PartitionOptions
) -> list[np.ndarray]:
    """uniform random"""
    return partition_iid(len(categories), n_clients, rng)


@PARTITIONS.register("shards")
def _shards(
    categories: Sequence[str], n_clients: int, rng: np.random.Generator, options: PartitionOptions
) -> list[np.ndarray]:
    """sort by category, 2K shards, 2 per client (Shepherd)"""
    return partition_shards(categories, n_clients, options.shards_per_client, rng)


@PARTITIONS.register("dirichlet")
def _dirichlet(
    categories: Sequence[str], n_clients: int, rng: np.random.Generator, options: PartitionOptions
) -> list[np.ndarray]:
    """per-category client shares from Dirichlet(alpha)"""
    return partition_dirichlet(categories, n_clients, options.dirichlet_alpha, rng, min_size=options.min_size)


@PARTITIONS.register("quantity")
def _quantity(
    categories: Sequence[str], n_clients: int, rng: np.random.Generator, options: PartitionOptions
) -> list[np.ndarray]:
    """each client takes U(a, b) of the remaining pool (S0)"""
    low, high = options.quantity_range[0], options.quantity_range[1]
    return partition_quantity(len(categories), n_clients, low, high, rng)


@PARTITIONS.register("natural")
def _natural(
    categories: Sequence[str], n_clients: int, rng: np.random.Generator, options: PartitionOptions
) -> list[np.ndarray]:
    """whole categories (modules) per client"""
    return partition_natural(categories, n_clients)


PARTITIONERS = PARTITIONS.names()
"""Every scheme's name, in registration order (kept for code written before the registry)."""


def describe_partitions() -> list[tuple[str, str, list[tuple[str, object, str]]]]:
    """(name, summary, settings) per scheme, sorted by name, for ``fedpeft partitions``."""
    return PARTITIONS.describe()


def partition_rows(
    method: str,
    categories: Sequence[str],
    n_clients: int,
    rng: np.random.Generator,
    *,
    shards_per_client: int = 2,
    dirichlet_alpha: float = 0.5,
    quantity_range: tuple[float, float] = (0.03, 0.3),
    min_size: int = 1,
) -> list[np.ndarray]:
    """Dispatch to the named partitioner, then enforce the minimum client size."""
    if method not in PARTITIONS:
        raise PartitionError(f"unknown data.partition {method!r}; valid: {', '.join(PARTITIONS.names())}")
    options = PartitionOptions(shards_per_client, dirichlet_alpha, quantity_range, min_size)
    parts = PARTITIONS.get(method)(categories, n_clients, rng, options)
    check_min_size(parts, min_size)
    return parts
