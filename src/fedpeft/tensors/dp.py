"""Client-level differential privacy arithmetic (DP-FedAvg, McMahan et al., 2018) as pure functions:
the L2 norm of an update over all tensors together, clipping an update to a norm, Gaussian noise from a
generator the caller passes, and the noised equal-weight mean of the clipped updates."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedpeft.tensors.aggregate import TensorDict


def update_norm(state: TensorDict, start: TensorDict) -> float:
    """L2 norm of ``state - start`` over all tensors together (flattened into one vector)."""
    return math.sqrt(sum(float((state[k].double() - start[k].double()).pow(2).sum()) for k in start))


def clip_update(state: TensorDict, start: TensorDict, clipping_norm: float) -> tuple[TensorDict, float]:
    """(``start`` + the update scaled to L2 norm at most ``clipping_norm``, the update's norm before)."""
    norm = update_norm(state, start)
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    if scale == 1.0:
        return dict(state), norm
    return {k: (start[k] + (state[k] - start[k]) * scale).to(state[k].dtype) for k in start}, norm


def gaussian_noise_like(state: TensorDict, std: float, generator: torch.Generator) -> TensorDict:
    """Independent N(0, std^2) noise for every element, drawn in float64 on the CPU (then cast), tensors in
    the order of their names."""
    return {
        k: (torch.randn(t.shape, dtype=torch.float64, generator=generator) * std).to(t.dtype)
        for k, t in sorted(state.items())
    }


def noised_mean(start_state: TensorDict, clipped: Sequence[TensorDict], noise: TensorDict) -> TensorDict:
    """start + (the equal-weight mean of the clipped states' updates) + noise, in float64, each tensor back
    in its dtype."""
    n = len(clipped)
    new_state: TensorDict = {}
    for k, start in start_state.items():
        mean_delta = sum((c[k].double() - start.double()) for c in clipped) / n
        new_state[k] = (start.double() + mean_delta + noise[k].double()).to(start.dtype)
    return new_state
