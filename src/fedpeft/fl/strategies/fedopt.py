"""Server optimizers on the pseudo-gradient (Reddi et al., 2021, "Adaptive Federated Optimization"):
the server treats delta = mean(client states) - global state as a gradient step and applies its own
optimizer to it. FedAvgM keeps momentum; FedAdam, FedYogi and FedAdagrad keep first and second moments.
The steps themselves are pure functions in :mod:`fedpeft.tensors.server_optim`.

Their moments are explicit state (``state_dict``), written into every checkpoint and restored on resume.
The arithmetic follows Flower's strategies of the same names (flwr.serverapp.strategy) and is tested
against them on the same arrays; FedAdam's bias correction can be switched off for the paper's form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies.base import Aggregate, ServerContext, Strategy, setting
from fedpeft.fl.strategies.fedavg import example_weighted_mean
from fedpeft.fl.strategies.state import pack_state, unpack_state
from fedpeft.tensors import TensorDict
from fedpeft.tensors.server_optim import adaptive_step


@dataclass(frozen=True)
class AdaptiveSettings:
    eta: float = setting(0.01, "Server learning rate.")
    beta_1: float = setting(0.9, "Decay of the first moment (momentum) of the pseudo-gradient.")
    tau: float = setting(1e-3, "Adaptivity: added to the root of the second moment.")

    def __post_init__(self) -> None:
        if self.eta <= 0 or self.tau <= 0:
            raise ValueError(f"eta={self.eta} and tau={self.tau} must be > 0")
        for name in ("beta_1", "beta_2"):
            if not 0 <= getattr(self, name, 0) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1)")


@dataclass(frozen=True)
class DecayingSettings(AdaptiveSettings):
    beta_2: float = setting(0.99, "Decay of the second moment.")


class AdaptiveServerOptimizer(Strategy):
    """Shared FedAdam / FedYogi / FedAdagrad step; subclasses say how the second moment moves."""

    Settings = AdaptiveSettings

    def __init__(self, settings: Any = None):
        super().__init__(settings)
        self.m: TensorDict = {}
        self.v: TensorDict = {}
        self.steps = 0

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step_size(self, step: int) -> float:
        """The server learning rate of server step ``step`` (1 in the first round)."""
        return self.settings.eta

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        mean = example_weighted_mean(updates, server_round)
        s = self.settings
        self.steps += 1
        step = adaptive_step(
            global_state,
            mean,
            self.m,
            self.v,
            beta_1=s.beta_1,
            tau=s.tau,
            step_size=self.step_size(self.steps),
            second_moment=self.second_moment,
        )
        self.m |= step.m
        self.v |= step.v
        return Aggregate(step.state)

    def state_dict(self) -> dict[str, Any]:
        return pack_state(steps=self.steps, m=self.m, v=self.v)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fields = unpack_state(self.name, state, values={"steps": 0}, tensors=("m", "v"), dtype=torch.float64)
        self.steps, self.m, self.v = int(fields["steps"]), fields["m"], fields["v"]
