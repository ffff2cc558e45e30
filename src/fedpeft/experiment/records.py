"""What a run writes down: a line per client and per round in metrics.jsonl, with every payload counted in
bytes, and the summary a finished (or stopped) run leaves in summary.json.

Bytes are counted by the experiment, for every runtime alike: each state at its own LoRA rank when client
ranks differ, at ``fl.transport_dtype``, plus the strategy's extra tensors (control variates) and, when
stacking, every stacked pair a client must download to rebuild the base it trains on.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.sampling import sample_clients
from fedpeft.reporting import run_dir as rd
from fedpeft.seeding import numpy_rng
from fedpeft.tensors import TensorDict, payload_bytes

if TYPE_CHECKING:
    from fedpeft.experiment.setup import RunState

Metrics = dict[str, float]


def wire_bytes(state: RunState, client_id: int, trainable: TensorDict) -> int:
    """Bytes of a state on the wire to or from a client: at its own LoRA rank when ranks differ, at
    ``fl.transport_dtype``."""
    if state.ranks:
        return state.ranks.wire_bytes(trainable, client_id, state.transport)
    return payload_bytes(trainable, state.transport)


def stack_download_bytes(state: RunState, client_id: int, rnd: int) -> int:
    """Stacked pairs a client downloads before round ``rnd``: every round merged since it last trained
    (its base must hold them all), found by replaying the seeded sampling of the earlier rounds."""
    cfg = state.config.fl
    last = 0
    for q in range(rnd - 1, 0, -1):
        if client_id in sample_clients(cfg.clients, cfg.fraction, numpy_rng(cfg.seed, "sampling", q)):
            last = q
            break
    missing = [state.merged[q] for q in range(max(last, 1), rnd) if q in state.merged]
    return sum(payload_bytes({"B": b, "A": a}, state.transport) for pairs in missing for b, a in pairs.values())


def client_record(rnd: int, u: ClientUpdate, bytes_up: int, bytes_down: int) -> dict[str, Any]:
    """A client's line in the log."""
    return {
        "type": "client",
        "round": rnd,
        "client": u.client_id,
        "examples": u.num_examples,
        "steps": u.num_steps,
        "train_loss": u.train_loss,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "seconds": round(u.seconds, 4),
    }


def client_records(
    state: RunState, rnd: int, updates: Sequence[ClientUpdate], sent: Mapping[int, TensorDict]
) -> list[dict[str, Any]]:
    """Each aggregated client's line, with the bytes it uploaded and downloaded this round: its state, the
    strategy's extra tensors each way and, when stacking, the merged pairs it lacked. Baselines that
    exchange nothing count 0."""
    extra = state.strategy.extra_payload_bytes(state.global_state, state.transport)
    records = []
    for u in updates:
        stacks = stack_download_bytes(state, u.client_id, rnd) if state.merged else 0
        up = wire_bytes(state, u.client_id, u.state) + extra
        down = wire_bytes(state, u.client_id, sent.get(u.client_id, {})) + extra + stacks
        records.append(client_record(rnd, u, up, down))
    if not state.strategy.communicates:
        records = [r | {"bytes_up": 0, "bytes_down": 0} for r in records]
    return records


def round_record(
    rnd: int,
    client_ids: Sequence[int],
    failed: Mapping[int, str],
    updates: Sequence[ClientUpdate],
    clients: Sequence[Mapping[str, Any]],
    evaluation: tuple[Metrics | None, dict[str, Metrics], dict[str, Metrics]],
    seconds: float,
    mixing: torch.Tensor | None,
    aggregation: Mapping[str, Any],
) -> dict[str, Any]:
    """The round's line: who was aggregated (and who dropped, why), the example-weighted train loss, the
    evaluation, the bytes of ``clients`` (their records) summed, and the aggregation's figures."""
    test, per_client, client_test = evaluation
    n_examples = sum(u.num_examples for u in updates)
    return {
        "type": "round",
        "round": rnd,
        "clients": list(client_ids),
        **({"failed": {str(c): why for c, why in sorted(failed.items())}} if failed else {}),
        "examples": n_examples,
        "train_loss": sum(u.train_loss * u.num_examples for u in updates) / n_examples,
        "eval": test,
        "client_eval": per_client,
        "client_test": client_test,
        "bytes_up": sum(r["bytes_up"] for r in clients),
        "bytes_down": sum(r["bytes_down"] for r in clients),
        "seconds": round(seconds, 4),
        **({"mixing": mixing.tolist()} if mixing is not None else {}),
        **aggregation,
    }


def summary_record(state: RunState, rounds: Sequence[Mapping[str, Any]], status: str, started: float) -> dict[str, Any]:
    """summary.json: the run's quality (first, last and best evaluation), bytes, time and memory."""
    run_dir = state.run_dir
    evals = [r for r in rounds if r.get("eval")]
    trainable = sum(t.numel() for t in state.global_state.values())
    total_params = sum(p.numel() for p in state.model.parameters())
    return {
        "recipe": state.config.recipe,
        "status": status,
        "rounds_completed": state.completed_round,
        "rounds_planned": state.config.fl.rounds,
        "final_eval": evals[-1]["eval"] if evals else None,
        "initial_eval": evals[0]["eval"] if evals and evals[0]["round"] == 0 else None,
        "best_eval_loss": min((r["eval"]["loss"] for r in evals if "loss" in r["eval"]), default=None),
        "final_client_eval": evals[-1].get("client_eval") if evals else None,
        "bytes_up": sum(r.get("bytes_up", 0) for r in rounds),
        "bytes_down": sum(r.get("bytes_down", 0) for r in rounds),
        "rounds_seconds": round(sum(r.get("seconds", 0.0) for r in rounds), 3),
        "wall_seconds_this_process": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_initialized() else None,
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "trainable_percent": round(100.0 * trainable / total_params, 4),
        "adapter": str(run_dir / rd.ADAPTER_DIR) if status == "completed" else None,
        **{k: rounds[-1][k] for k in ("dp_epsilon", "dp_delta") if rounds and k in rounds[-1]},
    }
