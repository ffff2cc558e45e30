"""The Flower runtime's server side: the same client round and strategy, with clients behind a Flower Grid.

``experiment.fit`` drives the rounds and asks its runtime for the sampled clients' updates.
:class:`FlowerRuntime` answers by sending each sampled client's starting state (an ``ArrayRecord``) and its
round (a ``ConfigRecord``) to the SuperNode holding that client's partition, and turning the replies back
into :class:`ClientUpdate` objects; under SecAgg+ the round goes through :mod:`.secagg`. On the SuperNode,
:mod:`.client` runs the client round with a :class:`LocalRuntime` built from the same configuration, so a
client trains exactly as it does in the local runtime (same seeds per (run, round, client), same transport
rounding, same LoRA ranks, the strategy's own client hook).

Which node holds which client is asked once (a ``query`` message): a SuperNode answers with its node
config's ``partition-id`` (the Simulation Engine numbers its virtual nodes so; a deployed SuperNode is
started with ``--node-config partition-id=N``). Flower is imported only inside the methods that use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedpeft.fl.client_round import ClientHook, ClientUpdate, count_local_steps
from fedpeft.runtime.base import ClientEvaluation
from fedpeft.runtime.flower.errors import FlowerRoundError
from fedpeft.runtime.flower.records import (
    EVALUATE,
    PARTITION_KEY,
    QUERY,
    TRAIN,
    evaluation_from_reply,
    to_record,
    update_from_reply,
)
from fedpeft.runtime.flower.secagg import secure_round
from fedpeft.runtime.local import LocalRuntime
from fedpeft.tensors import TensorDict


class FlowerRuntime:
    """A runtime whose clients answer through a Flower ``Grid`` (Simulation Engine or deployment)."""

    def __init__(
        self,
        grid: Any,
        local: LocalRuntime,
        config_text: str,
        timeout: float | None = None,
        secagg: Mapping[str, Any] | None = None,
    ) -> None:
        self.grid = grid
        self.local = local
        self.config_text = config_text
        """The run's resolved configuration (YAML), sent with every round: a SuperNode builds its client from it."""
        self.timeout = timeout
        self.secagg = dict(secagg) if secagg is not None else None
        """SecAgg+ settings (``num_shares``, ``reconstruction_threshold``, ``clipping_range``,
        ``quantization_range`` of Flower's SecAggPlusWorkflow); None: clients send their states as they are."""
        self.nodes: dict[int, int] = {}

    def discover(self, n_clients: int, wait_seconds: float | None = 60.0) -> dict[int, int]:
        """Client id -> node id, from each node's ``partition-id``. Asks every node as it connects and stops
        as soon as each client has a node, so a node that left (and still counts as connected until its
        heartbeats lapse) does not hold the run up; gives up after ``wait_seconds``. ``None`` (a simulation,
        whose nodes exist from the start, one per client): no clock, since a loaded machine can take minutes
        to start them; it stops once every node has answered, with its partition or an error."""
        from flwr.app import ConfigRecord, Message, RecordDict

        deadline = None if wait_seconds is None else time.monotonic() + wait_seconds
        asked: set[int] = set()
        answered: set[int] = set()
        pending: set[str] = set()
        nodes: dict[int, int] = {}
        while True:
            new = [node for node in self.grid.get_node_ids() if node not in asked]
            if new:
                question = RecordDict({"config": ConfigRecord({"ask": PARTITION_KEY})})
                messages = [Message(question, dst_node_id=node, message_type=QUERY) for node in new]
                pending.update(self.grid.push_messages(messages))
                asked.update(new)
            for reply in self.grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                answered.add(reply.metadata.src_node_id)
                if not reply.has_error():
                    client, node = int(reply.content["config"][PARTITION_KEY]), reply.metadata.src_node_id
                    if nodes.setdefault(client, node) != node:
                        first, second = sorted((nodes[client], node))
                        raise FlowerRoundError(
                            f"SuperNodes {first} and {second} both hold client {client} ({PARTITION_KEY}="
                            f"{client}): each member's node needs its own --partition-id (0..{n_clients - 1})"
                        )
            if all(c in nodes for c in range(n_clients)):
                break
            if deadline is None and len(asked) >= n_clients and answered >= asked:
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(0.3)
        missing = sorted(set(range(n_clients)) - nodes.keys())
        if missing:
            within = "" if wait_seconds is None else f" within flower.connect_timeout={wait_seconds:g} s"
            raise FlowerRoundError(
                f"{len(asked)} SuperNode(s) connected{within}, but none "
                f"holds client(s) {missing[:10]} of fl.clients="
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
        on_client_failed: Callable[[int, str], None] | None = None,
    ) -> list[ClientUpdate]:
        """The updates of the sampled clients that replied, trained on their SuperNodes (the strategy's hook
        is rebuilt there from the configuration, so ``hook_for`` is not sent). A client whose node reports
        an error, or that does not reply within ``flower.round_timeout``, is reported to
        ``on_client_failed(client, reason)``; without that callback it fails the round."""
        from flwr.app import ConfigRecord, Message, RecordDict

        if not self.nodes:
            raise FlowerRoundError("FlowerRuntime.discover() must run before the first round")

        def failed(cid: int, reason: str) -> None:
            if on_client_failed is None:
                raise FlowerRoundError(f"round {server_round}: client {cid} failed: {reason}")
            on_client_failed(cid, reason)

        if self.secagg is not None:
            return secure_round(self, server_round, client_ids, global_state, failed, on_client_start)
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
                on_client_start(cid, self.planned_steps(cid))

        replies = send_and_receive(self.grid, messages, self.timeout)
        # The grid stamps each message with its id as it pushes it; replies (and the SuperLink's own error
        # replies for a node that stopped sending heartbeats) name the message they answer.
        client_of = {m.metadata.message_id: cid for m, cid in zip(messages, client_ids, strict=True)}
        by_client: dict[int, ClientUpdate] = {}
        answered: set[int] = set()
        for reply in replies:
            cid = client_of.get(reply.metadata.reply_to_message_id)
            if cid is None or cid in answered:
                continue
            answered.add(cid)
            if reply.has_error():
                failed(cid, _error_reason(reply.error.reason))
                continue
            try:
                by_client[cid] = update_from_reply(reply.content)
            except (KeyError, TypeError, ValueError) as err:
                failed(cid, f"unreadable reply ({type(err).__name__}: {err})")
        for cid in client_ids:
            if cid not in answered:
                failed(cid, f"no reply within flower.round_timeout={self.timeout} s")
        return [by_client[cid] for cid in client_ids if cid in by_client]

    def planned_steps(self, client_id: int) -> int:
        """A client's local steps this round, for progress: known where the server holds the client's rows
        (a rehearsal on one shared source), else ``train.max_steps`` (0: unknown)."""
        examples = self.local.client_examples
        if client_id in examples if isinstance(examples, Mapping) else client_id < len(examples):
            return count_local_steps(len(examples[client_id]), self.local.args)
        return self.local.args.max_steps or 0

    def train_pooled(self, *args: Any, **kwargs: Any) -> list[ClientUpdate]:
        raise FlowerRoundError("the centralised baseline pools every client's rows in one place: use runtime=local")

    def evaluate_clients(
        self,
        server_round: int,
        states: Mapping[int, TensorDict],
        thresholds: Mapping[int, float] | None = None,
        on_client_failed: Callable[[int, str], None] | None = None,
    ) -> dict[int, ClientEvaluation]:
        """Each client's metrics, computed on its node (an ``evaluate`` message with the state): the node's
        validation rows never leave it. A node that fails or does not answer within ``flower.round_timeout``
        is reported to ``on_client_failed`` and left out."""
        from flwr.app import ConfigRecord, Message, RecordDict

        messages, clients = [], []
        for cid, state in states.items():
            if cid not in self.nodes:
                if on_client_failed is not None:
                    on_client_failed(cid, "no SuperNode holds it")
                continue
            config = {"round": server_round, "client": cid, "run_config": self.config_text}
            if thresholds and thresholds.get(cid) is not None:
                config["threshold"] = float(thresholds[cid])
            content = RecordDict({"arrays": to_record(state), "config": ConfigRecord(config)})
            messages.append(
                Message(content, dst_node_id=self.nodes[cid], message_type=EVALUATE, group_id=str(server_round))
            )
            clients.append(cid)
        replies = send_and_receive(self.grid, messages, self.timeout) if messages else []
        client_of = {m.metadata.message_id: cid for m, cid in zip(messages, clients, strict=True)}
        found: dict[int, ClientEvaluation] = {}
        for reply in replies:
            cid = client_of.get(reply.metadata.reply_to_message_id)
            if cid is None or cid in found:
                continue
            if reply.has_error():
                if on_client_failed is not None:
                    on_client_failed(cid, _error_reason(reply.error.reason))
                continue
            _, metrics, n = evaluation_from_reply(reply.content)
            found[cid] = (metrics, n)
        for cid in clients:
            if cid not in found and on_client_failed is not None:
                on_client_failed(cid, f"no evaluation within flower.round_timeout={self.timeout} s")
        return {cid: found[cid] for cid in clients if cid in found}

    def close(self) -> None:
        """The grid belongs to the ServerApp that Flower runs; nothing to release here."""
        self.local.close()


def send_and_receive(grid: Any, messages: list, timeout: float | None, poll: float = 0.1) -> list:
    """``grid.send_and_receive`` with a short poll (Flower's waits 3 s between pulls, which a round pays in
    full when the replies come a moment after a pull): push, then pull every ``poll`` seconds until every
    message is answered or ``timeout`` passes."""
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list = []
    while pending and (deadline is None or time.monotonic() < deadline):
        got = list(grid.pull_messages(list(pending)))
        replies.extend(got)
        pending -= {m.metadata.reply_to_message_id for m in got}
        if pending:
            time.sleep(poll)
    return replies


def _error_reason(reason: str) -> str:
    """The last line of a node's error (a ClientApp's exception arrives with its whole traceback)."""
    lines = [line.strip() for line in str(reason).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:500]
