"""FedAdam (Reddi et al., 2021): Adam on the server over the pseudo-gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedpeft.fl.strategies.base import register_strategy, setting
from fedpeft.fl.strategies.fedopt import AdaptiveServerOptimizer, DecayingSettings
from fedpeft.tensors.server_optim import adam_second_moment, adam_step_size


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
        return adam_second_moment(v, delta_sq, self.settings.beta_2)

    def step_size(self, step: int) -> float:
        s = self.settings
        if not s.bias_correction:
            return s.eta
        # Flower's form: the exponent is the server step + 1 (flwr.serverapp.strategy.FedAdam).
        return adam_step_size(s.eta, s.beta_1, s.beta_2, step + 1)
