"""FedProx (Li et al., 2020): FedAvg on the server; each client adds mu/2 * ||theta - theta_global||^2 over
its trainable tensors to its loss, which keeps local updates near the global state on non-IID data.

The term enters as its gradient, mu * (theta - theta_global), added once per optimizer step after the
step's gradients are complete (the same as adding the term to the step loss), so no extra graph is built.
With mu = 0 the update is bit-identical to FedAvg's."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedpeft.fl.client_round import ClientUpdate, add_to_gradients, on_device_of
from fedpeft.fl.strategies.base import Aggregate, ServerContext, Strategy, register_strategy, setting
from fedpeft.fl.strategies.fedavg import example_weighted_mean
from fedpeft.tensors import TensorDict


@dataclass(frozen=True)
class FedProxSettings:
    mu: float = setting(0.01, "Weight of the proximal term mu/2 * ||theta - theta_global||^2 (0: FedAvg).")

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise ValueError(f"mu={self.mu} must be >= 0")


@dataclass
class ProximalTerm:
    mu: float
    anchor: TensorDict
    """The global state the client started from; its own copy, since tensors move to the model's device."""

    def correct_gradients(self, params: dict[str, torch.nn.Parameter]) -> None:
        add_to_gradients(params, lambda name, p: (p - on_device_of(self.anchor, name, p)) * self.mu)


@register_strategy("fedprox")
class FedProx(Strategy):
    """FedAvg plus a proximal term mu/2 * ||theta - theta_global||^2 in every client's loss (Li et al., 2020)."""

    stackable = True

    Settings = FedProxSettings

    def client_hook(self, client_id: int, global_state: TensorDict) -> ProximalTerm:
        return ProximalTerm(self.settings.mu, dict(global_state))

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        return Aggregate(example_weighted_mean(updates, server_round))
