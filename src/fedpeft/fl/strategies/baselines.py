"""The floor and the ceiling of every comparison: each client alone, and one model on all the data.

- ``local``: every client trains only on its own rows from its own state; nothing is exchanged. As a
  personalised strategy its mixing matrix is the identity, so it runs through the same round loop, the
  same per-client evaluation and the same checkpoint as the trust strategies.
- ``centralised``: each round one model trains on the union of the sampled clients' training rows for
  the sum of their local step budgets (the compute of the federated round, done sequentially on pooled
  data), starting from the previous round's model. No data stays private, so nothing is counted as sent.
  There is nothing to aggregate, so ``fl.lora_aggregation`` does not apply to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies.base import (
    Aggregate,
    Mixing,
    PersonalisedStrategy,
    ServerContext,
    Strategy,
    register_strategy,
)
from fedpeft.tensors import TensorDict


@register_strategy("local")
class LocalOnly(PersonalisedStrategy):
    """Each client trains alone on its own rows; nothing is exchanged (the floor)."""

    communicates = False

    def mixing_weights(
        self, updates: Sequence[ClientUpdate], server_round: int, context: ServerContext | None = None
    ) -> Mixing:
        return Mixing(torch.eye(len(updates), dtype=torch.float64))


@register_strategy("centralised")
class Centralised(Strategy):
    """One model trained on the pooled data of the sampled clients with their summed step budget (the ceiling)."""

    kind = "pooled"
    communicates = False

    def check_context(self, context: ServerContext) -> None:
        if context.heterogeneous_ranks:
            raise ValueError(
                "fl.strategy=centralised trains one model at the global rank peft.r; peft.client_ranks would make "
                "it a different adapter from the federated clients'. Compare it at one rank"
            )

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        if len(updates) != 1:
            raise ValueError(
                f"round {server_round}: centralised training returns one pooled update, got {len(updates)}"
            )
        return Aggregate(dict(updates[0].state))
