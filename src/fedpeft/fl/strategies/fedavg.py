"""FedAvg (McMahan et al., 2017): the example-count-weighted mean of the clients' trainable states."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies.base import Aggregate, ServerContext, Strategy, register_strategy
from fedpeft.tensors import TensorDict, weighted_average


def example_weighted_mean(updates: Sequence[ClientUpdate], server_round: int) -> TensorDict:
    """The clients' states weighted by their example counts; a ValueError naming the round if none."""
    if not updates:
        raise ValueError(f"round {server_round}: no client updates to aggregate")
    return weighted_average([u.state for u in updates], [u.num_examples for u in updates])


@register_strategy("fedavg")
class FedAvg(Strategy):
    """Mean of the client states weighted by their example counts (McMahan et al., 2017)."""

    stackable = True

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        return Aggregate(example_weighted_mean(updates, server_round))
