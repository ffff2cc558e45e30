"""Server optimisers over the pseudo-gradient, as pure functions of the old state and moments.

The server treats delta = target - x (the round's mean of the client states minus the global state) as a
gradient step and applies its own optimiser to it (Reddi et al., 2021, "Adaptive Federated Optimization";
Hsu et al., 2019 for momentum). Each function returns the new state and the new moments; the strategy
keeps the moments between rounds. Arithmetic is in float64 and each tensor leaves in its own dtype; the
operation order is Flower's (``flwr.serverapp.strategy``), against which the strategies are tested.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from fedpeft.tensors.aggregate import TensorDict

SecondMoment = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(previous v, delta^2) -> the next v."""


class AdaptiveStep(NamedTuple):
    state: TensorDict
    m: TensorDict
    """First moment of every tensor of the state."""
    v: TensorDict
    """Second moment of every tensor of the state."""


class MomentumStep(NamedTuple):
    state: TensorDict
    velocity: TensorDict
    """The momentum of every tensor of the state; empty when momentum is 0 (nothing to keep)."""


def adam_second_moment(v: torch.Tensor, delta_sq: torch.Tensor, beta_2: float) -> torch.Tensor:
    """Adam: an exponential moving average of delta^2."""
    return beta_2 * v + (1 - beta_2) * delta_sq


def yogi_second_moment(v: torch.Tensor, delta_sq: torch.Tensor, beta_2: float) -> torch.Tensor:
    """Yogi: v moves toward delta^2 by a bounded additive step."""
    return v - (1 - beta_2) * delta_sq * torch.sign(v - delta_sq)


def adagrad_second_moment(v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
    """Adagrad: v accumulates delta^2."""
    return v + delta_sq


def adam_step_size(eta: float, beta_1: float, beta_2: float, t: int) -> float:
    """Adam's bias-corrected step size at exponent ``t``."""
    return eta * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)


def adaptive_step(
    global_state: TensorDict,
    target: TensorDict,
    m: TensorDict,
    v: TensorDict,
    *,
    beta_1: float,
    tau: float,
    step_size: float,
    second_moment: SecondMoment,
) -> AdaptiveStep:
    """One FedAdam / FedYogi / FedAdagrad step: m <- beta_1 m + (1 - beta_1) delta, v <- second_moment(v,
    delta^2), x <- x + step_size * m / (sqrt(v) + tau). A tensor without moments yet starts from zeros."""
    state: TensorDict = {}
    new_m: TensorDict = {}
    new_v: TensorDict = {}
    for key, current in global_state.items():
        x = current.to(torch.float64)
        delta = target[key].to(torch.float64) - x
        m_key = m.get(key, torch.zeros_like(x))
        v_key = v.get(key, torch.zeros_like(x))
        new_m[key] = beta_1 * m_key + (1 - beta_1) * delta
        new_v[key] = second_moment(v_key, delta * delta)
        state[key] = (x + step_size * new_m[key] / (new_v[key].sqrt() + tau)).to(current.dtype)
    return AdaptiveStep(state, new_m, new_v)


def momentum_step(
    global_state: TensorDict, target: TensorDict, velocity: TensorDict, *, server_lr: float, momentum: float
) -> MomentumStep:
    """One FedAvgM step on the pseudo-gradient g = x - target: u <- momentum * u + g (u = g in the first
    round), x <- x - server_lr * u."""
    state: TensorDict = {}
    new_velocity: TensorDict = {}
    for key, current in global_state.items():
        x = current.to(torch.float64)
        pseudo_gradient = x - target[key].to(torch.float64)
        previous = velocity.get(key)
        step = pseudo_gradient if previous is None else momentum * previous + pseudo_gradient
        if momentum > 0:
            new_velocity[key] = step
        state[key] = (x - server_lr * step).to(current.dtype)
    return MomentumStep(state, new_velocity)


def step_toward(global_state: TensorDict, target: TensorDict, lr: float) -> TensorDict:
    """x + lr * (target - x), tensor by tensor (lr 1: the target itself, up to rounding)."""
    return {
        k: (x.to(torch.float64) + lr * (target[k].to(torch.float64) - x.to(torch.float64))).to(x.dtype)
        for k, x in global_state.items()
    }
