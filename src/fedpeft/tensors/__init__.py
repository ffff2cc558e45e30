"""Pure arithmetic over named tensors (``dict[str, Tensor]``). Imports neither Flower nor transformers,
so strategies built on it are testable with hand-made dicts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

TensorDict = dict[str, torch.Tensor]


def payload_bytes(state: TensorDict) -> int:
    """Bytes on the wire for ``state`` at its own dtypes (tensor data only)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def weighted_average(states: Sequence[TensorDict], weights: Sequence[float]) -> TensorDict:
    """sum_k w_k * state_k / sum_k w_k, key by key, accumulated in float64 and cast back.

    All states must share keys and shapes; weights must be non-negative with a positive sum.
    """
    if not states:
        raise ValueError("weighted_average needs at least one state")
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    keys = states[0].keys()
    for i, s in enumerate(states[1:], start=1):
        if s.keys() != keys:
            raise KeyError(f"state {i} has different keys from state 0: {sorted(s.keys() ^ keys)[:5]}")
    total = float(sum(weights))
    out: TensorDict = {}
    for key in keys:
        ref = states[0][key]
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for s, w in zip(states, weights, strict=True):
            if s[key].shape != ref.shape:
                raise ValueError(f"shape mismatch for {key}: {tuple(s[key].shape)} vs {tuple(ref.shape)}")
            acc += s[key].to(torch.float64) * (w / total)
        out[key] = acc.to(ref.dtype)
    return out
