"""FedAvgM (Hsu et al., 2019): server momentum on the pseudo-gradient global - mean(clients)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies.base import Aggregate, ServerContext, Strategy, register_strategy, setting
from fedpeft.fl.strategies.fedavg import example_weighted_mean
from fedpeft.fl.strategies.state import pack_state, unpack_state
from fedpeft.tensors import TensorDict
from fedpeft.tensors.server_optim import momentum_step


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

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        mean = example_weighted_mean(updates, server_round)
        s = self.settings
        step = momentum_step(global_state, mean, self.velocity, server_lr=s.server_lr, momentum=s.momentum)
        self.velocity |= step.velocity
        return Aggregate(step.state)

    def state_dict(self) -> dict[str, Any]:
        return pack_state(velocity=self.velocity)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = unpack_state(self.name, state, tensors=("velocity",), dtype=torch.float64)["velocity"]
