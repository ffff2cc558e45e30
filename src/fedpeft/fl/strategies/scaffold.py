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
- The control variates double the traffic: c travels down and c_i+ - c_i up with the adapters, counted
  in the round's bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedpeft.fl.client_round import ClientUpdate, add_to_gradients, lr_factor, on_device_of, warmup_steps
from fedpeft.fl.strategies.base import ServerContext, Strategy, register_strategy, setting
from fedpeft.fl.strategies.fedavg import example_weighted_mean
from fedpeft.tensors import TensorDict, payload_bytes


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


@register_strategy("scaffold")
class Scaffold(Strategy):
    """FedAvg with control variates correcting client drift (SCAFFOLD, Karimireddy et al., 2020)."""

    Settings = ScaffoldSettings
    hook_reads_server_state = True

    def __init__(self, settings: Any = None):
        super().__init__(settings)
        self.context: ServerContext | None = None
        self.c: TensorDict = {}
        self.c_clients: dict[int, TensorDict] = {}
        self.n_clients = 0

    def bind(self, context: ServerContext) -> None:
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
        self.context = context
        self.n_clients = len(context.client_val)

    def _zeros(self, like: TensorDict) -> TensorDict:
        return {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in like.items()}

    def client_hook(self, client_id: int, global_state: TensorDict) -> DriftCorrection:
        c = self.c or self._zeros(global_state)
        c_i = self.c_clients.get(client_id) or self._zeros(global_state)
        return DriftCorrection({k: (c[k] - c_i[k]).to(torch.float32) for k in global_state})

    def extra_payload_bytes(self, global_state: TensorDict, transport: torch.dtype | None = None) -> int:
        return payload_bytes(global_state, transport)

    def _summed_lr(self, steps: int) -> float:
        args = self.context.args
        n_warmup = warmup_steps(steps, args.warmup_ratio)
        return sum(args.lr * lr_factor(t, steps, n_warmup, args.schedule) for t in range(steps))

    def aggregate(self, global_state: TensorDict, updates: Sequence[ClientUpdate], server_round: int) -> TensorDict:
        if self.context is None:
            raise RuntimeError("scaffold must be bound to the run (Strategy.bind) before it aggregates")
        mean = example_weighted_mean(updates, server_round)
        c = self.c or self._zeros(global_state)
        delta_c = self._zeros(global_state)
        for u in updates:
            c_i = self.c_clients.get(u.client_id) or self._zeros(global_state)
            scale = 1.0 / self._summed_lr(u.num_steps)
            new_c_i = {
                k: c_i[k] - c[k] + (global_state[k].to(torch.float64) - u.state[k].to(torch.float64)) * scale
                for k in global_state
            }
            for k in delta_c:
                delta_c[k] += (new_c_i[k] - c_i[k]) / len(updates)
            self.c_clients[u.client_id] = new_c_i
        share = len(updates) / max(self.n_clients, len(updates))
        self.c = {k: c[k] + share * delta_c[k] for k in c}
        lr = self.settings.server_lr
        return {
            k: (x.to(torch.float64) + lr * (mean[k].to(torch.float64) - x.to(torch.float64))).to(x.dtype)
            for k, x in global_state.items()
        }

    def state_dict(self) -> dict[str, Any]:
        state = {f"c/{k}": v for k, v in self.c.items()}
        for cid, c_i in self.c_clients.items():
            state |= {f"ci/{cid}/{k}": v for k, v in c_i.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.c, self.c_clients = {}, {}
        for key, value in state.items():
            kind, _, rest = key.partition("/")
            if kind == "c":
                self.c[rest] = value.to(torch.float64)
            elif kind == "ci":
                cid, _, name = rest.partition("/")
                self.c_clients.setdefault(int(cid), {})[name] = value.to(torch.float64)
            else:
                raise ValueError(f"scaffold checkpoint state has an unknown key {key!r}")
