"""Secure aggregation (SecAgg+) for the Flower runtime, through Flower's SecAggPlusWorkflow and its client
mod: the server side of a round (:func:`secure_round`, driving the workflow through the two calls of Flower's
legacy Strategy interface it makes), the ClientApp's train handler for such a round
(:func:`client_train_legacy`, FitIns in, FitRes out) and the mod that masks its reply
(:func:`secure_aggregation_mod`). The server learns only the example-weighted mean of the states of the
clients that completed the protocol. Flower is imported only inside these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.runtime.flower.records import TRAIN
from fedpeft.tensors import TensorDict

if TYPE_CHECKING:
    from fedpeft.runtime.flower.client import ClientSide
    from fedpeft.runtime.flower.server import FlowerRuntime


def secagg_settings(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """SecAggPlusWorkflow's arguments from the ``flower`` options, or None without secure aggregation.
    Flower reads a float as a fraction and an int as a count."""
    if not options["secure_aggregation"]:
        return None
    shares, threshold = options["secagg_num_shares"], options["secagg_reconstruction_threshold"]
    return {
        "num_shares": shares if shares <= 1 else int(shares),
        "reconstruction_threshold": threshold if threshold <= 1 else int(threshold),
        "clipping_range": options["secagg_clipping_range"],
        "quantization_range": options["secagg_quantization_range"],
    }


def secure_round(
    runtime: FlowerRuntime,
    server_round: int,
    client_ids: Sequence[int],
    global_state: TensorDict,
    failed: Callable[[int, str], None],
    on_client_start: Callable[[int, int], None] | None = None,
) -> list[ClientUpdate]:
    """A round under SecAgg+ (Flower's SecAggPlusWorkflow, through its legacy strategy interface): each
    client sends its state masked, and the server learns only the example-weighted mean of the states
    of the clients that completed the protocol. Every returned update carries that mean as its state
    (with the client's own counts and loss), so FedAvg's mean of them is the secure aggregate itself."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import ConfigRecord, Context, RecordDict
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

    names = sorted(global_state)
    parameters = ndarrays_to_parameters([global_state[n].detach().cpu().float().numpy() for n in names])
    round_ = _SecureRound()
    for cid in client_ids:
        config = {"round": server_round, "client": cid, "run_config": runtime.config_text, "names": "\n".join(names)}
        round_.fitins.append((_NodeProxy(runtime.nodes[cid]), FitIns(parameters, config)))
        if on_client_start is not None:
            on_client_start(cid, runtime.planned_steps(cid))
    context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=round_)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: server_round})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(parameters, True)
    heaviest = max(len(runtime.local.client_examples[cid]) for cid in client_ids)
    SecAggPlusWorkflow(**runtime.secagg, max_weight=float(heaviest), timeout=runtime.timeout)(runtime.grid, context)
    client_of = {node: cid for cid, node in runtime.nodes.items()}
    if round_.aggregate is None:
        for cid in client_ids:
            failed(cid, "secure aggregation halted: fewer clients than its threshold completed the protocol")
        return []
    arrays = parameters_to_ndarrays(round_.aggregate)
    mean = {n: torch.from_numpy(a.copy()).to(global_state[n].dtype) for n, a in zip(names, arrays, strict=True)}
    updates = {}
    for proxy, fitres in round_.results:
        cid, m = client_of[proxy.node_id], fitres.metrics
        updates[cid] = ClientUpdate(
            client_id=cid,
            state=mean,
            num_examples=int(fitres.num_examples),
            num_steps=int(m["num_steps"]),
            train_loss=float(m["train_loss"]),
            seconds=float(m["seconds"]),
        )
    for cid in client_ids:
        if cid not in updates:
            failed(cid, "dropped out of the secure aggregation round")
    return [updates[cid] for cid in client_ids if cid in updates]


@dataclass
class _NodeProxy:
    node_id: int


class _SecureRound:
    """The two legacy Strategy calls SecAggPlusWorkflow makes for one round: which nodes get which FitIns,
    and the (securely aggregated) result."""

    def __init__(self) -> None:
        self.fitins: list[tuple[_NodeProxy, Any]] = []
        self.results: list[tuple[_NodeProxy, Any]] = []
        self.aggregate = None

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[_NodeProxy, Any]]:
        return self.fitins

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Any, dict]:
        # every result's parameters are already the unmasked weighted mean
        self.results = list(results)
        self.aggregate = results[0][1].parameters if results else None
        return self.aggregate, {}


LEGACY_FITINS = "fitins.parameters"
"""The record a SecAgg+ round's train message carries its state in (Flower's legacy FitIns form)."""


def client_train_legacy(message: Any, side_for: Callable[[str], ClientSide]) -> Any:
    """The train handler for a SecAgg+ round: Flower's legacy FitIns in (the global state as an ordered list
    of arrays, their names in the config), FitRes out; Flower's secaggplus_mod masks the reply's arrays
    before they leave the node. ``side_for(config_text)`` is the run's client side on this node."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import Message
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    config = fitins.config
    side = side_for(str(config["run_config"]))
    cid, server_round = int(config["client"]), int(config["round"])
    names = str(config["names"]).split("\n")
    arrays = parameters_to_ndarrays(fitins.parameters)
    start = {n: torch.from_numpy(a.copy()) for n, a in zip(names, arrays, strict=True)}
    (update,) = side.runtime.train_round(server_round, [cid], start, hook_for=side.hook_for)
    metrics = {"client": cid, "num_steps": update.num_steps, "train_loss": update.train_loss, "seconds": update.seconds}
    parameters = ndarrays_to_parameters([update.state[n].detach().cpu().float().numpy() for n in names])
    fitres = FitRes(Status(Code.OK, ""), parameters, update.num_examples, metrics)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)


def secure_aggregation_mod(message: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
    """Flower's SecAgg+ client mod, for the messages of a SecAgg+ round only (the others pass through)."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if message.metadata.message_type == TRAIN and RECORD_KEY_CONFIGS in message.content.config_records:
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)
