"""The Flower runtime's client side: what fedpeft's ClientApp does on a SuperNode (or a simulation's Ray
actor). A train message runs one client round with a :class:`LocalRuntime` built from the run's own
configuration, so a client trains exactly as in the local runtime; a query message tells the server which
client this node holds.

Nothing here knows how a run is set up: the handlers are given ``build(config_text)`` (the experiment's,
passed in by the entry points), so this layer imports neither ``experiment`` nor ``data``. A client's side
is built once per process and run (:func:`client_side_for`). An optional fault hook wraps each client
round (the entry points pass :func:`fedpeft.testing.fault_drill`); the runtime itself injects nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedpeft.fl.client_round import ClientHook, ClientUpdate
from fedpeft.runtime.flower.records import PARTITION_KEY, evaluation_metrics, from_record, to_record
from fedpeft.runtime.flower.secagg import LEGACY_FITINS, client_train_legacy
from fedpeft.runtime.local import LocalRuntime
from fedpeft.tensors import TensorDict

ClientFault = Callable[[int, int, TensorDict, Callable[[TensorDict], ClientUpdate]], ClientUpdate]
"""A fault hook around one client round on a node: ``fault(server_round, client, start, train)`` returns the
update to send, normally ``train(start)``; a drill may raise, delay or corrupt it."""


@dataclass
class ClientSide:
    """What a SuperNode needs to train and evaluate the run's clients it holds: the local runtime (model, the
    clients' rows, their evaluation) and the strategy's client hook."""

    runtime: LocalRuntime
    hook_for: Callable[[int, TensorDict], ClientHook | None] | None


NodeConfig = Mapping[str, Any]
"""A SuperNode's node config (``partition-id``; with its own data ``data-file``, ``eval-file``, ``schema``;
settings that change memory but not the mathematics: ``device``, ``micro-batch-size``,
``gradient-checkpointing``)."""
BuildClientSide = Callable[[str, NodeConfig], ClientSide]
"""``build(config_text, node_config)``: a node's side of the run (the experiment's, passed in)."""

_CLIENT_CACHE: dict[tuple[str, tuple], ClientSide] = {}


def reset_client_cache() -> bool:
    """Drop this process's client side (a run's model and data); True when there was one."""
    had = bool(_CLIENT_CACHE)
    _CLIENT_CACHE.clear()
    return had


def cached_sides() -> tuple[int, ...]:
    """Identities of the client sides this process holds (one run's at a time): a new one means a build."""
    return tuple(id(side) for side in _CLIENT_CACHE.values())


def client_side_for(config_text: str, node_config: NodeConfig, build: BuildClientSide) -> ClientSide:
    """This process's side of the run configured by ``config_text`` on a node configured by ``node_config``,
    built on first use; one run per process at a time, so building another frees the previous run's model."""
    key = (config_text, tuple(sorted((str(k), str(v)) for k, v in node_config.items())))
    if key not in _CLIENT_CACHE:
        _CLIENT_CACHE.clear()  # one run per process at a time: free the previous run's model
        _CLIENT_CACHE[key] = build(config_text, node_config)
    return _CLIENT_CACHE[key]


def client_train(message: Any, context: Any, build: BuildClientSide, fault: ClientFault | None = None) -> Any:
    """A ClientApp's train handler: one client round from the received state (through ``fault`` when
    given); the reply carries the new state and the round's figures. A SecAgg+ round arrives in Flower's
    legacy FitIns form (see :func:`~fedpeft.runtime.flower.secagg.client_train_legacy`)."""
    from flwr.app import Message, MetricRecord, RecordDict

    node_config = dict(context.node_config)
    if LEGACY_FITINS in message.content:
        return client_train_legacy(message, lambda config_text: client_side_for(config_text, node_config, build))
    config = message.content["config"]
    side = client_side_for(str(config["run_config"]), node_config, build)
    cid, server_round = int(config["client"]), int(config["round"])
    start = from_record(message.content["arrays"])

    def train(state: TensorDict) -> ClientUpdate:
        (update,) = side.runtime.train_round(server_round, [cid], state, hook_for=side.hook_for)
        return update

    update = train(start) if fault is None else fault(server_round, cid, start, train)
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


def client_evaluate(message: Any, context: Any, build: BuildClientSide) -> Any:
    """A ClientApp's evaluate handler: the received state on this node's validation rows of the client
    asked for; the reply carries the metrics and the number of examples they are over (never the rows)."""
    from flwr.app import Message, MetricRecord, RecordDict

    config = message.content["config"]
    side = client_side_for(str(config["run_config"]), dict(context.node_config), build)
    cid, server_round = int(config["client"]), int(config["round"])
    threshold = float(config["threshold"]) if "threshold" in config else None
    state = from_record(message.content["arrays"])
    thresholds = {cid: threshold} if threshold is not None else None
    metrics, n = side.runtime.evaluate_clients(server_round, {cid: state}, thresholds)[cid]
    return Message(RecordDict({"metrics": MetricRecord(evaluation_metrics(cid, metrics, n))}), reply_to=message)


def client_query(message: Any, context: Any) -> Any:
    """Answers the server's question of which client this node holds."""
    from flwr.app import ConfigRecord, Message, RecordDict

    partition = context.node_config.get(PARTITION_KEY)
    if partition is None:
        raise ValueError(f"this SuperNode has no {PARTITION_KEY!r} in its node config")
    return Message(RecordDict({"config": ConfigRecord({PARTITION_KEY: int(partition)})}), reply_to=message)
