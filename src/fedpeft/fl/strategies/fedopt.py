"""Server optimizers on the pseudo-gradient (Reddi et al., 2021, "Adaptive Federated Optimization"):
the server treats delta = mean(client states) - global state as a gradient step and applies its own
optimizer to it. FedAvgM keeps momentum; FedAdam, FedYogi and FedAdagrad keep first and second moments.

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
from fedpeft.fl.strategies.base import Strategy, setting
from fedpeft.fl.strategies.fedavg import example_weighted_mean
from fedpeft.tensors import TensorDict


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


def _moments_state(**moments: TensorDict) -> dict[str, Any]:
    return {f"{which}/{key}": t for which, state in moments.items() for key, t in state.items()}


def _moments_from(state: dict[str, Any], which: str) -> TensorDict:
    prefix = f"{which}/"
    return {k.removeprefix(prefix): v.to(torch.float64) for k, v in state.items() if k.startswith(prefix)}


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

    def step_size(self) -> float:
        return self.settings.eta

    def aggregate(self, global_state: TensorDict, updates: Sequence[ClientUpdate], server_round: int) -> TensorDict:
        mean = example_weighted_mean(updates, server_round)
        s = self.settings
        self.steps += 1
        out: TensorDict = {}
        for key, current in global_state.items():
            x = current.to(torch.float64)
            delta = mean[key].to(torch.float64) - x
            m = self.m.get(key, torch.zeros_like(x))
            v = self.v.get(key, torch.zeros_like(x))
            self.m[key] = s.beta_1 * m + (1 - s.beta_1) * delta
            self.v[key] = self.second_moment(v, delta * delta)
            out[key] = (x + self.step_size() * self.m[key] / (self.v[key].sqrt() + s.tau)).to(current.dtype)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, **_moments_state(m=self.m, v=self.v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self.m, self.v = _moments_from(state, "m"), _moments_from(state, "v")
