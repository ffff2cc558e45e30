"""FedAvgM (Hsu et al., 2019): server momentum on the pseudo-gradient global - mean(clients)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies.base import Strategy, register_strategy, setting
from fedpeft.fl.strategies.fedavg import example_weighted_mean
from fedpeft.tensors import TensorDict


@dataclass(frozen=True)
class FedAvgMSettings:
    server_lr: float = setting(1.0, "Server learning rate on the pseudo-gradient (1 with momentum 0: FedAvg).")
    momentum: float = setting(0.9, "Server momentum; the first round's momentum is the pseudo-gradient itself.")

    def __post_init__(self) -> None:
        if self.server_lr <= 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"server_lr={self.server_lr} must be > 0 and momentum={self.momentum} in [0, 1)")


@register_strategy("fedavgm")
class FedAvgM(Strategy):
    """FedAvg with server momentum: v = momentum * v + (global - mean); global -= server_lr * v (Hsu et al., 2019)."""

    Settings = FedAvgMSettings

    def __init__(self, settings: Any = None):
        super().__init__(settings)
        self.velocity: TensorDict = {}

    def aggregate(self, global_state: TensorDict, updates: Sequence[ClientUpdate], server_round: int) -> TensorDict:
        mean = example_weighted_mean(updates, server_round)
        s = self.settings
        out: TensorDict = {}
        for key, current in global_state.items():
            x = current.to(torch.float64)
            pseudo_gradient = x - mean[key].to(torch.float64)
            previous = self.velocity.get(key)
            velocity = pseudo_gradient if previous is None else s.momentum * previous + pseudo_gradient
            if s.momentum > 0:
                self.velocity[key] = velocity
            out[key] = (x - s.server_lr * velocity).to(current.dtype)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {f"velocity/{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = {k.removeprefix("velocity/"): v.to(torch.float64) for k, v in state.items()}
