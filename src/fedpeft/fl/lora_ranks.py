"""Clients with different LoRA ranks (``peft.client_ranks``) inside one global adapter of rank R.

A client of rank r < R trains in the shared model's rank-R layers with components r..R-1 of A and B set to
zero: their gradients are then zero (dA_j needs B_j, dB_j needs A_j), so with AdamW they stay exactly zero
and the client truly trains a rank-r adapter, at its own scaling alpha / r (the layers' scaling is
multiplied by R / r for its turn). States travel and are stored at the global scaling alpha / R:
- to the client: A[:r], B[:, :r] * r / R (the same product s_r B_c A_c = s_R B[:, :r] A[:r]);
- from the client: B_c * R / r, the components beyond r left as they were in the state it started from
  ("unchanged"), so any strategy averaging component j sees the clients that could not train it as
  having kept it. In ``product`` mode the global pair is an SVD re-factoring, ordered by singular value,
  so a client's truncation keeps the best rank-r part of the global update.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from fedpeft.models.lora_layers import scaled_lora
from fedpeft.tensors import TensorDict, payload_bytes
from fedpeft.tensors.lora import LORA_A_KEY as _A
from fedpeft.tensors.lora import LORA_B_KEY as _B


@dataclass(frozen=True)
class ClientRanks:
    global_rank: int
    ranks: tuple[int, ...]

    @classmethod
    def build(cls, global_rank: int, ranks: Sequence[int] | None) -> ClientRanks | None:
        """None when every client uses the global rank (nothing to convert)."""
        if not ranks or all(r == global_rank for r in ranks):
            return None
        return cls(global_rank, tuple(ranks))

    def rank_of(self, client_id: int) -> int:
        return self.ranks[client_id % len(self.ranks)]

    def scaling_factor(self, client_id: int) -> float:
        """The client's LoRA scaling over the global one: (alpha / r) / (alpha / R)."""
        return self.global_rank / self.rank_of(client_id)

    def client_scaling(self, model: torch.nn.Module, client_id: int) -> AbstractContextManager[None]:
        """The model's LoRA layers at the client's scaling alpha / r_i for the block."""
        return scaled_lora(model, self.scaling_factor(client_id))

    def to_client(self, state: TensorDict, client_id: int) -> TensorDict:
        r, big = self.rank_of(client_id), self.global_rank
        out = dict(state)
        for key, value in state.items():
            if _A in key:
                out[key] = value.clone()
                out[key][r:] = 0
            elif _B in key:
                out[key] = value * (r / big)
                out[key][:, r:] = 0
        return out

    def from_client(self, state: TensorDict, started_from: TensorDict, client_id: int) -> TensorDict:
        r, big = self.rank_of(client_id), self.global_rank
        out = dict(state)
        for key, value in state.items():
            if _A in key:
                out[key] = value.clone()
                out[key][r:] = started_from[key][r:]
            elif _B in key:
                out[key] = value * (big / r)
                out[key][:, r:] = started_from[key][:, r:]
        return out

    def wire_bytes(self, state: TensorDict, client_id: int, transport: torch.dtype | None = None) -> int:
        """Bytes of ``state`` as a rank-r client sends or receives it: r of the R components of each pair
        (floating-point tensors at ``transport`` if given)."""
        r, big = self.rank_of(client_id), self.global_rank
        total = 0
        for key, value in state.items():
            share = r / big if (_A in key or _B in key) else 1.0
            total += int(share * payload_bytes({key: value}, transport))
        return total
