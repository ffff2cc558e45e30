"""DP-FedAvg (McMahan et al., 2018), the method behind Flower's fixed-clipping differential-privacy
wrappers: client-level (epsilon, delta) differential privacy for the global adapter.

Each client's update (the trainable state it returns minus the one it started from) is scaled to L2 norm
at most C, on the server (``clipping: server``, the server sees raw updates) or on the client before it
sends (``clipping: client``); the server averages the n clipped updates with equal weights (the
sensitivity argument needs that: an example-weighted mean would let one client move it by more than C/n)
and adds Gaussian noise of standard deviation z * C / n to the mean, as Flower's ``compute_stdv`` does.

The clipping, the noise (from a generator passed in) and the noised mean are pure functions in
:mod:`fedpeft.tensors.dp`; ``clip_update`` and ``update_norm`` stay importable from here.

Notable choices:
- The server clips in both modes: with client clipping that is a no-op for honest clients (the round log
  shows how many updates arrived above C), and it bounds a client that did not clip.
- The noise comes from the operating system's secure randomness unless ``noise_seed`` is set. A seeded
  noise reproduces a run exactly (tests use it), but whoever knows the seed can subtract the noise, so it
  gives no privacy.
- Epsilon is reported per round (``dp_epsilon`` in the round record, the last one in summary.json) from
  Google's dp-accounting RDP accountant (``pip install 'fedpeft[dp]'``) for the Poisson-subsampled Gaussian
  mechanism with sampling rate q = clients per round / clients and add-or-remove-one-client neighbours,
  composed over the rounds so far: the usual DP-FedAvg accounting. fedpeft samples a fixed number of
  clients without replacement, which Poisson sampling approximates; with q = 1 the two are the same.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies.base import Aggregate, ServerContext, Strategy, register_strategy, setting
from fedpeft.seeding import torch_seed
from fedpeft.tensors import TensorDict
from fedpeft.tensors.dp import clip_update, gaussian_noise_like, noised_mean, update_norm

__all__ = ["ClipUpdate", "DPFedAvg", "DPFedAvgSettings", "clip_update", "dp_epsilon", "update_norm"]


def dp_epsilon(rounds: int, sample_rate: float, noise_multiplier: float, delta: float) -> float | None:
    """Epsilon of ``rounds`` rounds of the Poisson-subsampled Gaussian mechanism at (``sample_rate``,
    ``noise_multiplier``) for ``delta``, from dp-accounting's RDP accountant; None if it is not installed
    or there is no noise (no guarantee to report)."""
    if noise_multiplier <= 0 or rounds <= 0:
        return None
    try:
        import dp_accounting
    except ImportError:
        return None
    event = dp_accounting.PoissonSampledDpEvent(sample_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    # integer orders: exact RDP of the subsampled Gaussian (fractional ones are computed by a series that
    # may not converge, and the accountant warns for each)
    accountant = dp_accounting.rdp.RdpAccountant(orders=[*range(2, 129), 256, 512, 1024])
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class DPFedAvgSettings:
    clipping_norm: float = setting(1.0, "C: each client's update is scaled to L2 norm at most C.")
    noise_multiplier: float = setting(
        1.0, "z: Gaussian noise of std z*C/n is added to the mean of the round's n clipped updates (0: none)."
    )
    clipping: Literal["server", "client"] = setting(
        "server", "Where updates are clipped first: server (it sees raw updates) or client (before sending)."
    )
    delta: float = setting(1e-5, "delta of the reported (epsilon, delta); below 1/clients is customary.")
    noise_seed: int = setting(
        -1, "-1: noise from the OS's secure randomness; >= 0 reproducible noise (tests only: it can be removed)."
    )

    def __post_init__(self) -> None:
        if self.clipping_norm <= 0:
            raise ValueError(f"clipping_norm={self.clipping_norm} must be > 0")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier={self.noise_multiplier} must be >= 0")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta} must be in (0, 1)")


@dataclass
class ClipUpdate:
    """The client side of ``clipping: client``: the state the client sends is its start plus its update
    clipped to norm C."""

    start: TensorDict
    clipping_norm: float

    def correct_gradients(self, params: dict[str, torch.nn.Parameter]) -> None:
        return None

    def finish_update(self, state: TensorDict) -> TensorDict:
        return clip_update(state, self.start, self.clipping_norm)[0]


@register_strategy("dp-fedavg")
class DPFedAvg(Strategy):
    """FedAvg with client-level differential privacy: clipped updates, equal weights, Gaussian noise (DP-FedAvg)."""

    Settings = DPFedAvgSettings

    def check_context(self, context: ServerContext) -> None:
        s = self.settings
        if context.heterogeneous_ranks:
            raise ValueError(
                "dp-fedavg clips one update vector per client; peft.client_ranks gives clients different shapes"
            )
        if context.lora_aggregation == "product" and s.clipping == "client":
            raise ValueError(
                "dp-fedavg with clipping=client bounds each client's A and B update, not its product B A, which "
                "fl.lora_aggregation=product averages; use clipping=server or lora_aggregation=separate"
            )
        if s.noise_multiplier > 0 and dp_epsilon(1, context.sample_rate, s.noise_multiplier, s.delta) is None:
            warnings.warn(
                "dp-fedavg: dp-accounting is not installed, so no epsilon is reported; pip install 'fedpeft[dp]'",
                stacklevel=3,
            )

    def client_hook(self, client_id: int, global_state: TensorDict) -> ClipUpdate | None:
        if self.settings.clipping != "client":
            return None
        return ClipUpdate(dict(global_state), self.settings.clipping_norm)

    def noise_generator(self, server_round: int) -> torch.Generator:
        seed = self.settings.noise_seed
        value = secrets.randbits(63) if seed < 0 else torch_seed(seed, "dp_noise", server_round)
        return torch.Generator().manual_seed(value)

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        """Without a context (a test, no run), epsilon is accounted at sample rate 1."""
        if not updates:
            raise ValueError(f"round {server_round}: no client updates to aggregate")
        s, n = self.settings, len(updates)
        clipped, norms = zip(*(clip_update(u.state, global_state, s.clipping_norm) for u in updates), strict=True)
        std = s.noise_multiplier * s.clipping_norm / n
        noise = gaussian_noise_like(global_state, std, self.noise_generator(server_round))
        new_state = noised_mean(global_state, clipped, noise)
        figures = {
            "dp_noise_std": std,
            "dp_clipped_fraction": sum(norm > s.clipping_norm * (1 + 1e-5) for norm in norms) / n,
            "dp_max_update_norm": max(norms),
        }
        context = self.context_for(context)
        sample_rate = context.sample_rate if context is not None else 1.0
        epsilon = dp_epsilon(server_round, sample_rate, s.noise_multiplier, s.delta)
        if epsilon is not None:
            figures |= {"dp_epsilon": epsilon, "dp_delta": s.delta}
        return Aggregate(new_state, figures)
