"""The Flower runtime: the same client round and strategy, with clients behind a Flower Grid.

The server side is unchanged: ``experiment.fit`` drives the rounds and asks its runtime for the sampled
clients' updates. :class:`FlowerRuntime` answers by sending each sampled client's starting state (an
``ArrayRecord``) and its round (a ``ConfigRecord``) to the SuperNode holding that client's partition, and
turning the replies back into :class:`ClientUpdate` objects. On the SuperNode, :func:`client_train` runs
the client round with a :class:`LocalRuntime` built from the same configuration, so a client trains
exactly as it does in the local runtime (same seeds per (run, round, client), same transport rounding,
same LoRA ranks, the strategy's own client hook).

Which node holds which client is asked once (a ``query`` message): a SuperNode answers with its node
config's ``partition-id`` (the Simulation Engine numbers its virtual nodes so; a deployed SuperNode is
started with ``--node-config partition-id=N``).

Nothing here knows how a run is set up: the ClientApp is given a ``build(config_text)`` callable
(``experiment.flower_app`` supplies it), so this layer imports neither ``experiment`` nor ``data``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedpeft.fl.client_round import ClientHook, ClientUpdate, count_local_steps
from fedpeft.runtime.local import LocalRuntime
from fedpeft.tensors import TensorDict

PARTITION_KEY = "partition-id"
TRAIN, QUERY = "train", "query"


class FlowerRoundError(RuntimeError):
    pass


def to_record(state: TensorDict):
    from flwr.app import ArrayRecord

    return ArrayRecord({name: t.detach().cpu().contiguous() for name, t in state.items()})


def from_record(record) -> TensorDict:
    return dict(record.to_torch_state_dict())


class FlowerRuntime:
    """A runtime whose clients answer through a Flower ``Grid`` (Simulation Engine or deployment)."""

    def __init__(self, grid, local: LocalRuntime, config_text: str, timeout: float | None = None):
        self.grid = grid
        self.local = local
        self.config_text = config_text
        """The run's resolved configuration (YAML), sent with every round: a SuperNode builds its client from it."""
        self.timeout = timeout
        self.args, self.ranks, self.transport = local.args, local.ranks, local.transport
        self.nodes: dict[int, int] = {}

    def discover(self, n_clients: int, wait_seconds: float = 60.0) -> dict[int, int]:
        """Client id -> node id, from each node's ``partition-id``; waits for the nodes to connect."""
        from flwr.app import ConfigRecord, Message, RecordDict

        deadline = time.monotonic() + wait_seconds
        node_ids = list(self.grid.get_node_ids())
        while len(node_ids) < n_clients and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = list(self.grid.get_node_ids())
        messages = [
            Message(RecordDict({"config": ConfigRecord({"ask": PARTITION_KEY})}), dst_node_id=node, message_type=QUERY)
            for node in node_ids
        ]
        nodes: dict[int, int] = {}
        for reply in self.grid.send_and_receive(messages, timeout=wait_seconds):
            if reply.has_error():
                continue
            nodes[int(reply.content["config"][PARTITION_KEY])] = reply.metadata.src_node_id
        missing = sorted(set(range(n_clients)) - nodes.keys())
        if missing:
            raise FlowerRoundError(
                f"{len(node_ids)} SuperNode(s) connected, but none holds client(s) {missing[:10]} of fl.clients="
                f"{n_clients}; start one SuperNode per client with --node-config 'partition-id=N num-partitions="
                f"{n_clients}'"
            )
        self.nodes = nodes
        return nodes

    def train_round(
        self,
        server_round: int,
        client_ids: Sequence[int],
        global_state: TensorDict,
        on_client_start: Callable[[int, int], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        hook_for: Callable[[int, TensorDict], ClientHook | None] | None = None,
        client_states: Mapping[int, TensorDict] | None = None,
    ) -> list[ClientUpdate]:
        """The sampled clients' updates, trained on their SuperNodes (the strategy's hook is rebuilt there
        from the configuration, so ``hook_for`` is not sent)."""
        from flwr.app import ConfigRecord, Message, RecordDict

        if not self.nodes:
            raise FlowerRoundError("FlowerRuntime.discover() must run before the first round")
        messages = []
        for cid in client_ids:
            start = (client_states or {}).get(cid, global_state)
            content = RecordDict(
                {
                    "arrays": to_record(start),
                    "config": ConfigRecord({"round": server_round, "client": cid, "run_config": self.config_text}),
                }
            )
            messages.append(
                Message(content, dst_node_id=self.nodes[cid], message_type=TRAIN, group_id=str(server_round))
            )
            if on_client_start is not None:
                on_client_start(cid, count_local_steps(len(self.local.client_examples[cid]), self.args))
        replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
        by_client: dict[int, ClientUpdate] = {}
        for reply in replies:
            if reply.has_error():
                raise FlowerRoundError(f"round {server_round}: a client failed: {reply.error.reason}")
            by_client[int(reply.content["metrics"]["client"])] = update_from_reply(reply.content)
        missing = [cid for cid in client_ids if cid not in by_client]
        if missing:
            raise FlowerRoundError(f"round {server_round}: no reply from client(s) {missing} within {self.timeout} s")
        return [by_client[cid] for cid in client_ids]

    def train_pooled(self, *args: Any, **kwargs: Any) -> list[ClientUpdate]:
        raise FlowerRoundError("the centralised baseline pools every client's rows in one place: use runtime=local")


def update_from_reply(content) -> ClientUpdate:
    m = content["metrics"]
    return ClientUpdate(
        client_id=int(m["client"]),
        state=from_record(content["arrays"]),
        num_examples=int(m["num_examples"]),
        num_steps=int(m["num_steps"]),
        train_loss=float(m["train_loss"]),
        seconds=float(m["seconds"]),
    )


@dataclass
class ClientSide:
    """What a SuperNode needs to train any of the run's clients: the local runtime (model and every
    client's rows, from the same split) and the strategy's client hook."""

    runtime: LocalRuntime
    hook_for: Callable[[int, TensorDict], ClientHook | None] | None


_CLIENT_CACHE: dict[str, ClientSide] = {}


def client_train(message, build: Callable[[str], ClientSide]):
    """A ClientApp's train handler: one client round from the received state; the reply carries the new
    state and the round's figures."""
    from flwr.app import Message, MetricRecord, RecordDict

    config = message.content["config"]
    text = str(config["run_config"])
    if text not in _CLIENT_CACHE:
        _CLIENT_CACHE.clear()  # one run per process at a time: free the previous run's model
        _CLIENT_CACHE[text] = build(text)
    side = _CLIENT_CACHE[text]
    cid, server_round = int(config["client"]), int(config["round"])
    start = from_record(message.content["arrays"])
    (update,) = side.runtime.train_round(server_round, [cid], start, hook_for=side.hook_for)
    metrics = MetricRecord(
        {
            "client": cid,
            "num_examples": update.num_examples,
            "num_steps": update.num_steps,
            "train_loss": update.train_loss,
            "seconds": update.seconds,
        }
    )
    reply = RecordDict({"arrays": to_record(update.state), "metrics": metrics})
    return Message(reply, reply_to=message)


def client_query(message, context):
    """Answers the server's question of which client this node holds."""
    from flwr.app import ConfigRecord, Message, RecordDict

    partition = context.node_config.get(PARTITION_KEY)
    if partition is None:
        raise ValueError(f"this SuperNode has no {PARTITION_KEY!r} in its node config")
    return Message(RecordDict({"config": ConfigRecord({PARTITION_KEY: int(partition)})}), reply_to=message)
