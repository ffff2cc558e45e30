"""Which clients train in a round."""

from __future__ import annotations

import math

import numpy as np


def clients_per_round(n_clients: int, fraction: float) -> int:
    """max(1, round(fraction * n_clients)), rounding halves up."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fl.fraction must be in (0, 1], got {fraction}")
    return max(1, min(n_clients, math.floor(fraction * n_clients + 0.5)))


def sample_clients(n_clients: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """Sorted ids of the clients sampled without replacement from ``rng``."""
    k = clients_per_round(n_clients, fraction)
    return sorted(int(c) for c in rng.choice(n_clients, size=k, replace=False))
