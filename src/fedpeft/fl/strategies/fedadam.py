"""FedAdam (Reddi et al., 2021): Adam on the server over the pseudo-gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedpeft.fl.strategies.base import register_strategy, setting
from fedpeft.fl.strategies.fedopt import AdaptiveServerOptimizer, DecayingSettings


@dataclass(frozen=True)
class FedAdamSettings(DecayingSettings):
    bias_correction: bool = setting(
        True, "Adam's bias correction of the step size, as Flower applies it (false: the paper's form)."
    )


@register_strategy("fedadam")
class FedAdam(AdaptiveServerOptimizer):
    """Adam on the server over the pseudo-gradient mean(clients) - global (Reddi et al., 2021)."""

    Settings = FedAdamSettings

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return self.settings.beta_2 * v + (1 - self.settings.beta_2) * delta_sq

    def step_size(self) -> float:
        s = self.settings
        if not s.bias_correction:
            return s.eta
        # Flower's form: the exponent is the server step + 1 (flwr.serverapp.strategy.FedAdam).
        t = self.steps + 1
        return s.eta * math.sqrt(1 - s.beta_2**t) / (1 - s.beta_1**t)
