"""What is evaluated, when, and with which model state.

The task decides the metrics (language-model loss and accuracy, classification, retrieval, generation);
a global strategy is scored with its global state, a personalised one with each client's own. Evaluation
runs in the experiment's process on the one shared model; its rounds are ``eval.every`` and the last.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from fedpeft.config.schema import RunConfig
from fedpeft.data.federated import ClientData
from fedpeft.data.tasks import get_task
from fedpeft.evaluation.metrics import (
    best_f1_threshold,
    classifier_outputs,
    evaluate_causal_lm,
    evaluate_classifier,
    evaluate_generation,
    evaluate_retrieval,
)
from fedpeft.experiment.code_eval import SUITES_DIR, run_suites
from fedpeft.fl.client_round import RETRIEVAL_TEMPERATURE
from fedpeft.models.base import autocast
from fedpeft.models.state import set_trainable_state
from fedpeft.runtime.base import ClientEvaluator
from fedpeft.tensors import TensorDict

if TYPE_CHECKING:
    from fedpeft.experiment.setup import RunState


def split_evaluator(
    model: torch.nn.Module, tokenizer, config: RunConfig, head: str, threshold: float | None = None
) -> Callable[..., dict[str, float]]:
    """``evaluate(examples, distractors=())``: the task's metrics of the model as it is now on a split."""
    cfg = config.eval
    task = get_task(config.data.task)
    pad = tokenizer.pad_token_id
    unscored = () if task.score_special_tokens else tokenizer.all_special_ids

    def metrics(examples, distractors):
        if head == "embedding":
            return evaluate_retrieval(model, examples, cfg.batch_size, pad, RETRIEVAL_TEMPERATURE, distractors)
        if head == "sequence_classification":
            return evaluate_classifier(model, examples, cfg.batch_size, pad, task.num_labels, threshold)
        return evaluate_causal_lm(model, examples, cfg.batch_size, pad, unscored, head)

    def evaluate(examples, distractors=()):
        with autocast(next(model.parameters()).device, config.train.mixed_precision):
            return metrics(examples, distractors)

    return evaluate


Metrics = dict[str, float]


def client_evaluator(
    model: torch.nn.Module, tokenizer, config: RunConfig, head: str, clients: Mapping[int, ClientData]
) -> ClientEvaluator:
    """``evaluate(client, state, threshold)``: a state's metrics on the validation rows of one of ``clients``
    and how many rows that is. The local runtime calls it in the experiment's process; a node calls it on
    its own rows; either way only the numbers leave."""

    def evaluate(client_id: int, trainable: TensorDict, threshold: float | None) -> tuple[Metrics, int]:
        val = clients[client_id].val
        if not val:
            return {}, 0
        set_trainable_state(model, trainable)
        return split_evaluator(model, tokenizer, config, head, threshold)(val), len(val)

    return evaluate


def decision_threshold(state: RunState, trainable: TensorDict, clients: Sequence[ClientData]) -> float | None:
    """A classification task's threshold, chosen on ``clients``' validation rows (None for other tasks)."""
    if not get_task(state.config.data.task).threshold_on_validation:
        return None
    set_trainable_state(state.model, trainable)
    val = [e for c in clients for e in c.val]
    _, labels, probs = classifier_outputs(state.model, val, state.config.eval.batch_size, state.tokenizer.pad_token_id)
    return best_f1_threshold(labels, probs[:, 1])


def evaluate_test(state: RunState, trainable: TensorDict, threshold: float | None) -> Metrics:
    """One trainable state on the server's test split (with generation metrics where the task has them)."""
    config = state.config
    set_trainable_state(state.model, trainable)
    evaluate = split_evaluator(state.model, state.tokenizer, config, state.args.head, threshold)
    test = evaluate(state.data.test, state.data.distractors)
    if get_task(config.data.task).generation_metric is not None:
        with autocast(next(state.model.parameters()).device, config.train.mixed_precision):
            test |= evaluate_generation(state.model, state.tokenizer, state.data.test, config.eval.max_new_tokens)
    return test


def mean_metrics(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of metric dicts (the keys every one of them has)."""
    keys = [k for k in results[0] if all(k in r for r in results)]
    return {k: sum(float(r[k]) for r in results) / len(results) for k in keys}


def weighted_metrics(results: Sequence[tuple[Metrics, int]]) -> Metrics:
    """The example-weighted mean of clients' metrics (keys every one has); perplexity is exp of that loss."""
    results = [(m, n) for m, n in results if n > 0]
    if not results:
        return {}
    total = sum(n for _, n in results)
    keys = [k for k in results[0][0] if all(k in m for m, _ in results)]
    mean = {k: sum(float(m[k]) * n for m, n in results) / total for k in keys}
    if "perplexity" in mean and "loss" in mean:
        mean["perplexity"] = math.exp(min(mean["loss"], 50.0))
    return mean


def evaluate_global(state: RunState, rnd: int = 0) -> tuple[Metrics | None, dict[str, Metrics], dict[str, Metrics]]:
    """(test metrics, each client's validation metrics, each client's model's test metrics).

    A global strategy is scored with its global state (the third part is empty); a personalised one with each
    client's own state: on that client's validation rows, and on the test split as the mean over the
    clients' models (each kept in the third part). The validation metrics are computed where each client's
    rows are (the runtime's ``evaluate_clients``). A server without a test split (clients bring their own
    files and no ``data.server_source``) reports the clients' example-weighted validation metrics as the
    test metrics."""
    config, clients = state.config, state.data.clients
    personalised = state.strategy.kind == "personalised"
    states = {
        cid: state.client_states.get(cid, state.global_state) if personalised else state.global_state
        for cid in client_ids(state)
    }
    # Thresholds come from the validation rows the server holds (none where the clients hold their own).
    if personalised:
        thresholds = {c.client_id: decision_threshold(state, states[c.client_id], [c]) for c in clients}
    else:
        threshold = decision_threshold(state, state.global_state, clients) if clients else None
        thresholds = dict.fromkeys(states, threshold)
    tests = {}
    if state.data.test:
        if personalised:
            tests = {f"client-{cid}": evaluate_test(state, states[cid], thresholds.get(cid)) for cid in states}
        else:
            tests = {"global": evaluate_test(state, state.global_state, threshold)}
    wanted = {cid: s for cid, s in states.items() if config.eval.clients or not state.data.test}
    if clients:  # the server knows which clients have validation rows
        by_id = clients_by_id(state)
        wanted = {cid: s for cid, s in wanted.items() if by_id[cid].val}
    found = state.runtime.evaluate_clients(rnd, wanted, thresholds, on_client_failed=None) if wanted else {}
    per_client = {f"client-{cid}": m for cid, (m, n) in sorted(found.items()) if n > 0}
    if not state.data.test:
        test = weighted_metrics(list(found.values())) or None
    elif personalised:
        test = mean_metrics(list(tests.values()))
    else:
        test = tests["global"]
    if config.eval.suites:  # code suites need no data: run even where the server holds no test split
        models = {f"client-{cid}": s for cid, s in states.items()} if personalised else {"global": state.global_state}
        suites = {label: evaluate_suites(state, trainable, rnd, label) for label, trainable in models.items()}
        test = (test or {}) | mean_metrics(list(suites.values()))
        if personalised:
            tests = {label: tests.get(label, {}) | suites[label] for label in suites}
    return test, per_client if config.eval.clients else {}, tests if personalised else {}


def evaluate_suites(state: RunState, trainable: TensorDict, rnd: int, label: str) -> Metrics:
    """The ``eval.suites`` scores of one trainable state (``label``: global or client-N); each sample's
    completion and verdict go to ``suites/round-NNNN/<label>/`` in the run directory."""
    set_trainable_state(state.model, trainable)
    out_dir = state.run_dir / SUITES_DIR / f"round-{rnd:04d}" / label
    with autocast(next(state.model.parameters()).device, state.config.train.mixed_precision):
        metrics, _ = run_suites(state.model, state.tokenizer, state.config.eval, state.config.fl.seed, out_dir)
    return metrics


def client_ids(state: RunState) -> list[int]:
    """Every client of the run (the server may hold none of their rows)."""
    return list(range(state.config.fl.clients))


def clients_by_id(state: RunState) -> dict[int, ClientData]:
    return {c.client_id: c for c in state.data.clients}


def should_evaluate(config: RunConfig, rnd: int) -> bool:
    every = config.eval.every
    return rnd == config.fl.rounds or (every > 0 and rnd % every == 0)
