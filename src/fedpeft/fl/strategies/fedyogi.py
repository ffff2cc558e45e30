"""FedYogi (Reddi et al., 2021): Yogi's additive second moment on the server."""

from __future__ import annotations

import torch

from fedpeft.fl.strategies.base import register_strategy
from fedpeft.fl.strategies.fedopt import AdaptiveServerOptimizer, DecayingSettings
from fedpeft.tensors.server_optim import yogi_second_moment


@register_strategy("fedyogi")
class FedYogi(AdaptiveServerOptimizer):
    """Yogi on the server: v moves toward delta^2 by a bounded additive step (Reddi et al., 2021)."""

    Settings = DecayingSettings

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return yogi_second_moment(v, delta_sq, self.settings.beta_2)
