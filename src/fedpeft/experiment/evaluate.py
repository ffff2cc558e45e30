"""What is evaluated, when, and with which model state.

The task decides the metrics (language-model loss and accuracy, classification, retrieval, generation);
a global strategy is scored with its global state, a personalised one with each client's own. Evaluation
runs in the experiment's process on the one shared model; its rounds are ``eval.every`` and the last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from fedpeft.fl.client_round import RETRIEVAL_TEMPERATURE
from fedpeft.models.base import autocast
from fedpeft.models.state import set_trainable_state
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


def evaluate_state(
    state: RunState, trainable: TensorDict, clients: Sequence[ClientData]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """One trainable state on the test split and on the validation split of each of ``clients`` (which
    also choose the decision threshold of tasks that need one)."""
    set_trainable_state(state.model, trainable)
    config = state.config
    task = get_task(config.data.task)
    threshold = None
    if task.threshold_on_validation:
        val = [e for c in clients for e in c.val]
        _, val_labels, val_probs = classifier_outputs(
            state.model, val, config.eval.batch_size, state.tokenizer.pad_token_id
        )
        threshold = best_f1_threshold(val_labels, val_probs[:, 1])
    evaluate = split_evaluator(state.model, state.tokenizer, config, state.args.head, threshold)
    test = evaluate(state.data.test, state.data.distractors)
    if task.generation_metric is not None:
        with autocast(next(state.model.parameters()).device, config.train.mixed_precision):
            test |= evaluate_generation(state.model, state.tokenizer, state.data.test, config.eval.max_new_tokens)
    per_client = {}
    if config.eval.clients:
        for c in clients:
            if c.val:
                per_client[f"client-{c.client_id}"] = evaluate(c.val)
    return test, per_client


def mean_metrics(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of metric dicts (the keys every one of them has)."""
    keys = [k for k in results[0] if all(k in r for r in results)]
    return {k: sum(float(r[k]) for r in results) / len(results) for k in keys}


Metrics = dict[str, float]


def evaluate_global(state: RunState) -> tuple[Metrics, dict[str, Metrics], dict[str, Metrics]]:
    """(test metrics, each client's validation metrics, each client's model's test metrics).

    A global strategy is scored with its global state (the third part is empty). A personalised one with
    each client's own state: on that client's validation rows, and on the test split as the mean over the
    clients' models (each one kept in the third part)."""
    clients = state.data.clients
    if state.strategy.kind != "personalised":
        test, per_client = evaluate_state(state, state.global_state, clients)
        return test, per_client, {}
    tests, per_client = {}, {}
    for c in clients:
        test, own = evaluate_state(state, state.client_states.get(c.client_id, state.global_state), [c])
        tests[f"client-{c.client_id}"] = test
        per_client |= own
    return mean_metrics(list(tests.values())), per_client, tests


def should_evaluate(config: RunConfig, rnd: int) -> bool:
    every = config.eval.every
    return rnd == config.fl.rounds or (every > 0 and rnd % every == 0)
