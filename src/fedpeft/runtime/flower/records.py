"""What travels between the Flower runtime's server side and its ClientApp: the message types, states as
Flower ``ArrayRecord`` objects and back, and a train reply read as a :class:`ClientUpdate`. Flower is
imported only when a record is made."""

from __future__ import annotations

from typing import Any

from fedpeft.deploy import PARTITION_KEY
from fedpeft.fl.client_round import ClientUpdate
from fedpeft.tensors import TensorDict

__all__ = [
    "EVALUATE",
    "PARTITION_KEY",
    "QUERY",
    "TRAIN",
    "evaluation_from_reply",
    "evaluation_metrics",
    "from_record",
    "to_record",
    "update_from_reply",
]

TRAIN, EVALUATE, QUERY = "train", "evaluate", "query"
"""Message types: one client round; a state on a client's validation rows; which client a node holds
(answered with its ``PARTITION_KEY``)."""
_CLIENT, _EXAMPLES = "client", "num_examples"


def to_record(state: TensorDict) -> Any:
    """``state`` as a Flower ``ArrayRecord`` (CPU, contiguous, detached)."""
    from flwr.app import ArrayRecord

    return ArrayRecord({name: t.detach().cpu().contiguous() for name, t in state.items()})


def from_record(record: Any) -> TensorDict:
    """The state an ``ArrayRecord`` carries."""
    return dict(record.to_torch_state_dict())


def update_from_reply(content: Any) -> ClientUpdate:
    """The client update a ClientApp's train reply carries (``arrays`` and ``metrics``)."""
    m = content["metrics"]
    return ClientUpdate(
        client_id=int(m["client"]),
        state=from_record(content["arrays"]),
        num_examples=int(m["num_examples"]),
        num_steps=int(m["num_steps"]),
        train_loss=float(m["train_loss"]),
        seconds=float(m["seconds"]),
    )


def evaluation_metrics(client_id: int, metrics: dict[str, float], num_examples: int) -> dict[str, float | int]:
    """An evaluate reply's metric record: the client, its example count and its metrics."""
    return {_CLIENT: client_id, _EXAMPLES: num_examples, **{k: float(v) for k, v in metrics.items()}}


def evaluation_from_reply(content: Any) -> tuple[int, dict[str, float], int]:
    """(client, metrics, examples) from an evaluate reply."""
    m = dict(content["metrics"])
    client, n = int(m.pop(_CLIENT)), int(m.pop(_EXAMPLES))
    return client, {k: float(v) for k, v in m.items()}, n
