"""FedAdagrad (Reddi et al., 2021): Adagrad's accumulated second moment on the server."""

from __future__ import annotations

import torch

from fedpeft.fl.strategies.base import register_strategy
from fedpeft.fl.strategies.fedopt import AdaptiveServerOptimizer
from fedpeft.tensors.server_optim import adagrad_second_moment


@register_strategy("fedadagrad")
class FedAdagrad(AdaptiveServerOptimizer):
    """Adagrad on the server: v accumulates delta^2 (Reddi et al., 2021; Flower fixes beta_1 = 0)."""

    def second_moment(self, v: torch.Tensor, delta_sq: torch.Tensor) -> torch.Tensor:
        return adagrad_second_moment(v, delta_sq)
