"""SCAFFOLD (Karimireddy et al., 2020): control variates correct each client's drift on non-IID data.

The server keeps c and, per client, c_i (in a deployment c_i lives on the client; in simulation both are
server-side state, checkpointed as ``c/<tensor>`` and ``ci/<client>/<tensor>``). Notable choices:
- Every local step's gradient becomes g - c_i + c (the hook runs after the step's gradients, before
  clipping), so the client moves along an estimate of the global rather than its own gradient.
- The client's new variate is the paper's option II, c_i+ = c_i - c + (x - y_i) / (sum of the learning
  rates of its K steps): the summed schedule stands in for K * eta_l because fedpeft's local steps follow a
  warm-up and decay. The paper assumes SGD; with fedpeft's AdamW the variates are the same estimate of the
  mean gradient, and the correction enters before Adam's normalisation.
- Server: x+ = x + server_lr * (example-weighted mean of y_i - x) (server_lr 1 with zero variates is
  FedAvg) and c+ = c + (|S| / N) * mean over the round of (c_i+ - c_i).
- The variates' arithmetic is in :mod:`fedpeft.tensors.scaffold`; N is the run's number of clients, from
  the :class:`ServerContext` passed to ``aggregate_updates``.
- The control variates double the traffic: c travels down and c_i+ - c_i up with the adapters, counted
  in the round's bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedpeft.fl.client_round import (
    ClientUpdate,
    LocalTrainingArgs,
    add_to_gradients,
    lr_factor,
    on_device_of,
    warmup_steps,
)
from fedpeft.fl.strategies.base import Aggregate, ServerContext, Strategy, register_strategy, setting
from fedpeft.fl.strategies.fedavg import example_weighted_mean
from fedpeft.fl.strategies.state import pack_state, unpack_state
from fedpeft.tensors import TensorDict, payload_bytes
from fedpeft.tensors.scaffold import drift_correction, update_control_variates
from fedpeft.tensors.server_optim import step_toward


@dataclass(frozen=True)
class ScaffoldSettings:
    server_lr: float = setting(1.0, "Server learning rate on the mean client step (1: the plain mean).")

    def __post_init__(self) -> None:
        if self.server_lr <= 0:
            raise ValueError(f"server_lr={self.server_lr} must be > 0")


@dataclass
class DriftCorrection:
    """Adds c - c_i to every trainable gradient (moved to the parameters' device once)."""

    correction: TensorDict

    def correct_gradients(self, params: dict[str, torch.nn.Parameter]) -> None:
        add_to_gradients(params, lambda name, p: on_device_of(self.correction, name, p))


def summed_learning_rate(args: LocalTrainingArgs, steps: int) -> float:
    """The sum of the learning rates of a client's ``steps`` local steps under its schedule."""
    n_warmup = warmup_steps(steps, args.warmup_ratio)
    return sum(args.lr * lr_factor(t, steps, n_warmup, args.schedule) for t in range(steps))


@register_strategy("scaffold")
class Scaffold(Strategy):
    """FedAvg with control variates correcting client drift (SCAFFOLD, Karimireddy et al., 2020)."""

    Settings = ScaffoldSettings
    hook_reads_server_state = True

    def __init__(self, settings: Any = None):
        super().__init__(settings)
        self.c: TensorDict = {}
        self.c_clients: dict[int, TensorDict] = {}

    def check_context(self, context: ServerContext) -> None:
        if context.lora_aggregation != "separate":
            raise ValueError(
                "fl.strategy=scaffold corrects the gradients of the trained tensors themselves, so it needs "
                f"fl.lora_aggregation=separate, not {context.lora_aggregation!r}"
            )
        if context.heterogeneous_ranks:
            raise ValueError(
                "fl.strategy=scaffold keeps its control variates at the global rank; it does not take "
                "peft.client_ranks (clients of different ranks)"
            )

    def client_hook(self, client_id: int, global_state: TensorDict) -> DriftCorrection:
        return DriftCorrection(drift_correction(global_state, self.c, self.c_clients.get(client_id, {})))

    def extra_payload_bytes(self, global_state: TensorDict, transport: torch.dtype | None = None) -> int:
        return payload_bytes(global_state, transport)

    def _summed_lr(self, steps: int) -> float:
        """:func:`summed_learning_rate` under the bound run's training arguments."""
        return summed_learning_rate(self.require_context(None).args, steps)

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        context = self.require_context(context)
        mean = example_weighted_mean(updates, server_round)
        steps = [(u.client_id, u.state, 1.0 / summed_learning_rate(context.args, u.num_steps)) for u in updates]
        variates = update_control_variates(global_state, self.c, self.c_clients, steps, len(context.client_val))
        self.c = variates.c
        self.c_clients |= variates.clients
        return Aggregate(step_toward(global_state, mean, self.settings.server_lr))

    def state_dict(self) -> dict[str, Any]:
        return pack_state(c=self.c, ci=self.c_clients)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        fields = unpack_state(self.name, state, tensors=("c",), per_client=("ci",), dtype=torch.float64)
        self.c, self.c_clients = fields["c"], fields["ci"]
