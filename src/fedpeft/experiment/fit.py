"""The round loop: sample -> train -> screen -> aggregate -> evaluate -> record -> checkpoint, one call each.

:func:`fit` reads top to bottom with a banner per phase; the phases below it are what each call does.
Runtimes only move tensors and the strategy only does arithmetic: this module decides what happens when
and writes it down. A round counts as done only once its checkpoint is in place, so an interrupted run
resumes exactly at the next one.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from fedpeft.experiment.evaluate import evaluate_global, should_evaluate
from fedpeft.experiment.progress import RunProgress
from fedpeft.experiment.records import client_records, round_record
from fedpeft.experiment.setup import RunState
from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.lora_aggregation import aggregate_personalised_round, aggregate_round, stack_round
from fedpeft.fl.sampling import sample_clients
from fedpeft.fl.screening import check_enough_updates, update_problem
from fedpeft.models.lora_layers import merge_pairs, reset_lora
from fedpeft.models.state import get_trainable_state
from fedpeft.reporting.checkpoint import Checkpoint, save_checkpoint
from fedpeft.seeding import numpy_rng, torch_rng_scope
from fedpeft.tensors import TensorDict


def fit(state: RunState, progress: RunProgress) -> None:
    """The round loop, from the round after the last completed one to ``fl.rounds``."""
    cfg = state.config
    evaluate_before_training(state, progress)
    progress.start_rounds(cfg.fl.rounds, state.completed_round)
    for rnd in range(state.completed_round + 1, cfg.fl.rounds + 1):
        started = time.perf_counter()
        # ---- sample: a generator per round, so round r picks the same clients after a resume ----
        client_ids = sample_clients(cfg.fl.clients, cfg.fl.fraction, numpy_rng(cfg.fl.seed, "sampling", rnd))
        # ---- train: every sampled client from the global state (personalised: from its own) ----
        sent = {u: state.client_states.get(u, state.global_state) for u in client_ids}
        failed: dict[int, str] = {}
        updates = train(state, rnd, client_ids, progress, failed)
        # ---- screen: updates that do not fit or are not finite join the failed clients ----
        updates = usable_updates(state, rnd, updates, sent, failed, progress)
        client_ids = [c for c in client_ids if c not in failed]  # the round's record names the aggregated ones
        # ---- aggregate: the strategy, over LoRA pairs or their products ----
        mixing, aggregation = aggregate(state, rnd, updates)
        # ---- evaluate ----
        evaluation = evaluate_global(state, rnd) if should_evaluate(cfg, rnd) else (None, {}, {})
        # ---- record: a line per client and one for the round ----
        clients = client_records(state, rnd, updates, sent)
        for record in clients:
            state.log.append(record)
        seconds = time.perf_counter() - started
        record = round_record(rnd, client_ids, failed, updates, clients, evaluation, seconds, mixing, aggregation)
        state.log.append(record)
        # ---- checkpoint: only now is the round done ----
        checkpoint(state, rnd)
        state.completed_round = rnd
        traffic = record["bytes_up"] + record["bytes_down"]
        progress.round_line(rnd, client_ids, record["train_loss"], evaluation[0], traffic, seconds)
        progress.advance_round()


def evaluate_before_training(state: RunState, progress: RunProgress) -> None:
    """Round 0: the starting model's metrics, once per run (a resumed run has them already)."""
    if state.completed_round or state.config.eval.every <= 0 or any(r.get("round") == 0 for r in state.log.read()):
        return
    test, per_client, client_test = evaluate_global(state)
    state.log.append({"type": "round", "round": 0, "eval": test, "client_eval": per_client, "client_test": client_test})
    progress.round_line(0, [], None, test, 0, 0.0)


def train(
    state: RunState, rnd: int, client_ids: list[int], progress: RunProgress, failed: dict[int, str]
) -> list[ClientUpdate]:
    """This round's client updates: each sampled client from the global state (or its own, for a
    personalised strategy), or one update on their pooled rows (the centralised baseline). Clients the
    runtime lost are entered in ``failed`` with the reason."""
    strategy, current = state.strategy, state.global_state
    if strategy.kind == "pooled":
        return state.runtime.train_pooled(
            rnd, client_ids, current, on_client_start=progress.start_client, on_step=progress.client_step
        )
    return state.runtime.train_round(
        rnd,
        client_ids,
        current,
        on_client_start=progress.start_client,
        on_step=progress.client_step,
        hook_for=strategy.client_hook,
        client_states=state.client_states if strategy.kind == "personalised" else None,
        on_client_failed=failed.__setitem__,
    )


def usable_updates(
    state: RunState,
    rnd: int,
    updates: list[ClientUpdate],
    sent: dict[int, TensorDict],
    failed: dict[int, str],
    progress: RunProgress,
) -> list[ClientUpdate]:
    """The updates that fit the adapter they were trained from and are finite; the others join ``failed``.
    Each dropped client is logged (a ``client_failure`` record) and reported; fewer than ``fl.min_clients``
    usable updates end the run with every reason (its completed rounds stay, ready for ``--resume``)."""
    usable = []
    for u in updates:
        problem = update_problem(u.state, sent.get(u.client_id, state.global_state))
        if problem is None:
            usable.append(u)
        else:
            failed[u.client_id] = f"update rejected: {problem}"
    for cid, reason in sorted(failed.items()):
        state.log.append({"type": "client_failure", "round": rnd, "client": cid, "reason": reason})
        progress.message(f"round {rnd}: client {cid} dropped: {reason}")
    check_enough_updates(rnd, len(usable), state.config.fl.min_clients, failed)
    return usable


def aggregate(state: RunState, rnd: int, updates: list[ClientUpdate]) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Apply the strategy to the round's updates: each client's next state (personalised), a stacked round
    merged into the base (``lora_aggregation=stack``) or the next global state. Returns the mixing matrix
    (personalised only) and the aggregation's figures for the round's record."""
    strategy, mode = state.strategy, state.config.fl.lora_aggregation
    if strategy.kind == "personalised":
        mixed, mixing, aggregation = aggregate_personalised_round(strategy, mode, updates, rnd, context=state.context)
        state.client_states |= {u.client_id: m for u, m in zip(updates, mixed, strict=True)}
        return mixing, aggregation
    if mode == "stack":
        stacked, rest, aggregation = stack_round(
            strategy, state.global_state, updates, rnd, state.ranks, context=state.context
        )
        state.global_state = merge_stacked_round(state, rnd, stacked, rest)
        return None, aggregation
    state.global_state, aggregation = aggregate_round(
        strategy, mode, state.global_state, updates, rnd, context=state.context
    )
    return None, aggregation


def merge_stacked_round(
    state: RunState, rnd: int, stacked: dict[str, tuple[torch.Tensor, torch.Tensor]], rest: TensorDict
) -> TensorDict:
    """Merge a round's stacked pairs into the frozen base and return the next global state: a fresh LoRA
    adapter (seeded by the round) plus the strategy's aggregate of the other trainable tensors."""
    # Kept (and merged) at the adapter's dtype: what clients download, what the checkpoint holds, and
    # what a resume re-merges are the same tensors.
    dtype = next(iter(state.global_state.values())).dtype
    stacked = {k: (b.to(dtype), a.to(dtype)) for k, (b, a) in stacked.items()}
    merge_pairs(state.model, stacked)
    state.merged[rnd] = stacked
    with torch_rng_scope(state.config.fl.seed, "init", 2, rnd):  # ("init", 1) seeded the base model's head
        reset_lora(state.model)
    return get_trainable_state(state.model) | {k: v.clone() for k, v in rest.items()}


def checkpoint(state: RunState, rnd: int) -> None:
    """The round's full federated state on disk (global and client states, the strategy's, merged pairs)."""
    cfg = state.config
    save_checkpoint(
        state.run_dir,
        Checkpoint(
            round=rnd,
            global_state=state.global_state,
            strategy_state=state.strategy.state_dict(),
            extra={
                "rng": "derived from fl.seed per (purpose, round, client); no state to restore",
                "config": cfg.model_dump(mode="json"),
            },
            client_states=state.client_states,
            merged=state.merged,
        ),
        keep=cfg.output.keep_checkpoints,
    )
