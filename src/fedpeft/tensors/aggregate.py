"""Aggregation arithmetic over named tensors: weighted and robust means of client states and the
per-client mixing matrix of personalised strategies. Pure functions, float64 inside, the input dtype out;
no Flower, no transformers, so each is testable on hand-made dicts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TensorDict = dict[str, torch.Tensor]


def check_same_layout(states: Sequence[TensorDict]) -> None:
    """Every state has the keys and shapes of the first one."""
    if not states:
        raise ValueError("aggregation needs at least one state")
    ref = states[0]
    for i, s in enumerate(states[1:], start=1):
        if s.keys() != ref.keys():
            raise KeyError(f"state {i} has different keys from state 0: {sorted(s.keys() ^ ref.keys())[:5]}")
        for key, t in s.items():
            if t.shape != ref[key].shape:
                raise ValueError(f"shape mismatch for {key}: {tuple(t.shape)} vs {tuple(ref[key].shape)}")


def stacked(states: Sequence[TensorDict], key: str) -> torch.Tensor:
    """The clients' tensors under ``key`` stacked on a new first axis, in float64."""
    return torch.stack([s[key].to(torch.float64) for s in states])


def weighted_average(states: Sequence[TensorDict], weights: Sequence[float]) -> TensorDict:
    """sum_k w_k * state_k / sum_k w_k, key by key. Weights must be non-negative with a positive sum."""
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    check_same_layout(states)
    total = float(sum(weights))
    out: TensorDict = {}
    for key, ref in states[0].items():
        # Accumulated, not stacked: one float64 copy of a tensor in memory, however many clients.
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for s, w in zip(states, weights, strict=True):
            acc += s[key].to(torch.float64) * (w / total)
        out[key] = acc.to(ref.dtype)
    return out


def mix_states(states: Sequence[TensorDict], weights: torch.Tensor) -> list[TensorDict]:
    """Personalised aggregation: row i of the (n x n) matrix ``weights`` mixes the states into client
    i's model. Rows are normalised to sum to 1; identical rows give every client the same mean (FedAvg)."""
    n = len(states)
    if weights.shape != (n, n):
        raise ValueError(f"mixing matrix must be {n} x {n} for {n} states, got {tuple(weights.shape)}")
    w = weights.to(torch.float64)
    if (w < 0).any() or (w.sum(1) <= 0).any():
        raise ValueError("mixing matrix rows must be non-negative with a positive sum")
    w = w / w.sum(1, keepdim=True)
    check_same_layout(states)
    out: list[TensorDict] = [{} for _ in range(n)]
    for key, ref in states[0].items():
        mixed = torch.tensordot(w, stacked(states, key), dims=1)
        for i in range(n):
            out[i][key] = mixed[i].to(ref.dtype)
    return out


def coordinate_median(states: Sequence[TensorDict]) -> TensorDict:
    """Element-wise median; for an even count the mean of the two middle values (as numpy's median)."""
    check_same_layout(states)
    out: TensorDict = {}
    for key, ref in states[0].items():
        values = stacked(states, key).sort(dim=0).values
        n = len(states)
        middle = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
        out[key] = middle.to(ref.dtype)
    return out


def trimmed_mean(states: Sequence[TensorDict], beta: float) -> TensorDict:
    """Element-wise mean after dropping the int(beta * n) smallest and largest values."""
    check_same_layout(states)
    n = len(states)
    cut = int(beta * n)
    if cut < 1 or 2 * cut >= n:
        raise ValueError(f"trimming beta={beta} of {n} states cuts {cut} from each end; it must cut >= 1 and keep some")
    out: TensorDict = {}
    for key, ref in states[0].items():
        values = stacked(states, key).sort(dim=0).values
        out[key] = values[cut : n - cut].mean(0).to(ref.dtype)
    return out


def squared_distances(states: Sequence[TensorDict]) -> torch.Tensor:
    """(n x n) squared Euclidean distances between the states flattened over all keys."""
    check_same_layout(states)
    flat = torch.stack([torch.cat([s[k].to(torch.float64).flatten() for k in sorted(s)]) for s in states])
    return torch.cdist(flat, flat).pow(2)


def krum_scores(states: Sequence[TensorDict], n_byzantine: int) -> torch.Tensor:
    """Krum's score per state: the summed squared distance to its n - f - 2 nearest other states."""
    n = len(states)
    neighbours = n - n_byzantine - 2
    if neighbours < 1:
        raise ValueError(f"Krum with f={n_byzantine} needs at least f + 3 = {n_byzantine + 3} states, got {n}")
    dist = squared_distances(states)
    dist.fill_diagonal_(float("inf"))  # never one's own neighbour
    return dist.sort(dim=1).values[:, :neighbours].sum(1)


def mean_cosine_similarity(states: Sequence[TensorDict]) -> torch.Tensor:
    """(n x n) cosine similarity of the states, tensor by tensor, averaged over tensors (S3's 'dynamic'
    trust). A zero tensor has similarity 0 to everything."""
    check_same_layout(states)
    n = len(states)
    total = torch.zeros(n, n, dtype=torch.float64)
    for key in states[0]:
        flat = stacked(states, key).flatten(1)
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-300)
        total += unit @ unit.T
    return total / len(states[0])


def keep_largest(weights: torch.Tensor, k: int) -> torch.Tensor:
    """``weights`` with all but the ``k`` largest entries of each row set to 0 (ties by position)."""
    k = min(k, weights.shape[1])
    # A stable sort, not topk: ties go to the earlier position on every device.
    largest = weights.sort(dim=1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros_like(weights, dtype=torch.bool).scatter_(1, largest, True)
    return torch.where(keep, weights, torch.zeros_like(weights))


def drop_below(weights: torch.Tensor, tau: float, keep_at_least: int) -> torch.Tensor:
    """``weights`` with entries below ``tau`` set to 0, except each row's ``keep_at_least`` largest."""
    kept = keep_largest(weights, keep_at_least)
    return torch.where((weights >= tau) | (kept > 0), weights, torch.zeros_like(weights))


def normalise_rows(weights: torch.Tensor) -> torch.Tensor:
    return weights / weights.sum(1, keepdim=True)
