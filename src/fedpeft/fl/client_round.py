"""One client's local round: load the global trainable state, train, return the new state.

No Flower and no runtime here: the local runtime calls this in-process and the Flower ClientApp wraps
the same function. Notable choices:
- A fresh AdamW and LR schedule per round (FedIT/FlowerTune do the same); warm-up always ends before
  the last step and the LR then decays, never only rising (an S0 defect).
- The loss of one optimizer step is the token-level mean over the whole step batch, however it is cut
  into micro-batches, so gradient accumulation does not change the objective.
- Batch order and dropout come from generators derived from (seed, round, client).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from fedpeft.models.base import autocast
from fedpeft.models.heads import embed, token_logits_and_targets
from fedpeft.models.state import get_trainable_state, set_trainable_state, trainable_parameters
from fedpeft.tensors import TensorDict
from fedpeft.tensors.batching import (
    IGNORE_INDEX,
    TokenizedExample,
    collate_causal_lm,
    collate_classification,
    collate_packed_causal_lm,
    collate_query_code,
    collate_seq2seq,
    count_target_tokens,
)


@dataclass(frozen=True)
class LocalTrainingArgs:
    epochs: float | None
    max_steps: int | None
    batch_size: int
    micro_batch_size: int
    lr: float
    schedule: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float | None
    mask_prompt: bool
    pad_id: int
    head: str = "causal_lm"
    """What the model predicts (``models.base.HEADS``): next tokens (causal_lm), the response from the prompt
    (seq2seq_lm), a class per example (sequence_classification) or embeddings (embedding)."""
    mixed_precision: str = "none"
    """Forward passes under autocast in ``bf16`` or ``fp16`` (with a gradient scaler), or ``none``."""
    pack_capacity: int | None = None
    """Causal LM only: pack each micro-batch's examples into rows of this many tokens (no attention across
    documents) instead of padding every example to the longest; the loss is unchanged."""


class ClientHook(Protocol):
    """A strategy's change to local training, applied once per optimizer step after the step's gradients
    are complete and before clipping (e.g. FedProx adds the gradient of mu/2 * ||theta - theta_global||^2).
    A hook may also define ``finish_update(state) -> state``: what the client sends instead of its trained
    state (DP-FedAvg's client-side clipping)."""

    def correct_gradients(self, params: dict[str, torch.nn.Parameter]) -> None: ...


def add_to_gradients(
    params: dict[str, torch.nn.Parameter], extra: Callable[[str, torch.nn.Parameter], torch.Tensor]
) -> None:
    """For a :class:`ClientHook`: add ``extra(name, param)`` to every trainable gradient (no graph)."""
    with torch.no_grad():
        for name, p in params.items():
            term = extra(name, p)
            if p.grad is None:
                p.grad = term.clone()
            else:
                p.grad.add_(term)


def on_device_of(tensors: TensorDict, name: str, p: torch.Tensor) -> torch.Tensor:
    """``tensors[name]`` on ``p``'s device and dtype, moved once and kept there (not copied every step)."""
    t = tensors[name]
    if t.device != p.device or t.dtype != p.dtype:
        t = tensors[name] = t.to(device=p.device, dtype=p.dtype)
    return t


@dataclass
class ClientUpdate:
    client_id: int
    state: TensorDict
    num_examples: int
    """Distinct training examples the client holds: the FedAvg weight."""
    num_steps: int
    train_loss: float
    """Mean training loss over the round, per target token (causal LM) or per example (classification)."""
    seconds: float


def count_local_steps(n_examples: int, args: LocalTrainingArgs) -> int:
    if args.max_steps is not None:
        return args.max_steps
    return max(1, math.ceil(args.epochs * math.ceil(n_examples / args.batch_size)))


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length, leaving at least one step after the peak so the LR decays in every round of two
    or more steps."""
    return min(int(round(warmup_ratio * total_steps)), max(total_steps - 2, 0))


def lr_factor(step: int, total_steps: int, n_warmup: int, schedule: str) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based); never 0 on a step that runs."""
    if step < n_warmup:
        return (step + 1) / (n_warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - n_warmup) / max(1, total_steps - n_warmup)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown train.schedule {schedule!r}; valid: constant, linear, cosine")


def batch_order(n_examples: int, total_steps: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches for ``total_steps`` steps: epochs of fresh permutations, a short last batch per epoch."""
    batches: list[np.ndarray] = []
    while len(batches) < total_steps:
        perm = rng.permutation(n_examples)
        batches.extend(perm[i : i + batch_size] for i in range(0, n_examples, batch_size))
    return batches[:total_steps]


@dataclass(frozen=True)
class Objective:
    """How one head turns examples into a batch, a summed loss, and the count that loss is a sum over
    (target tokens or examples); a step's loss is the sum over its micro-batches divided by the count."""

    collate: Callable[..., dict[str, torch.Tensor]]
    loss_sum: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    count: Callable[[dict[str, torch.Tensor]], int]


def token_loss_sum(head: str) -> Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """Summed token cross-entropy over the labelled tokens of a batch, for a causal or seq2seq head."""

    def loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, targets = token_logits_and_targets(model, batch, head)
        return F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )

    return loss_sum


def class_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed cross-entropy of the example labels."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")


RETRIEVAL_TEMPERATURE = 0.05
"""Scale of the in-batch contrastive logits (cosine similarity / temperature)."""


def contrastive_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """In-batch contrastive loss: each query's own code against the batch's other codes, summed."""
    queries = embed(model, batch["query_ids"], batch["query_mask"])
    codes = embed(model, batch["code_ids"], batch["code_mask"])
    logits = queries @ codes.T / RETRIEVAL_TEMPERATURE
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="sum")


OBJECTIVES = {
    "causal_lm": Objective(collate_causal_lm, token_loss_sum("causal_lm"), lambda b: count_target_tokens(b["labels"])),
    "seq2seq_lm": Objective(
        collate_seq2seq, token_loss_sum("seq2seq_lm"), lambda b: int((b["labels"] != IGNORE_INDEX).sum())
    ),
    "sequence_classification": Objective(collate_classification, class_loss_sum, lambda b: len(b["labels"])),
    "embedding": Objective(collate_query_code, contrastive_loss_sum, lambda b: len(b["query_ids"])),
}


def train_client_round(
    model: torch.nn.Module,
    client_id: int,
    global_state: TensorDict,
    examples: Sequence[TokenizedExample],
    args: LocalTrainingArgs,
    rng: np.random.Generator,
    on_step: Callable[[int, int], None] | None = None,
    hook: ClientHook | None = None,
) -> ClientUpdate:
    """Train ``model`` (whose trainable tensors are overwritten by ``global_state``) on ``examples``.

    ``on_step(done, total)`` is called after every optimizer step for progress display; ``hook`` is the
    strategy's change to local training, if any.
    """
    start = time.perf_counter()
    if not examples:
        raise ValueError(f"client-{client_id}: a client round needs at least one training example")
    set_trainable_state(model, global_state)
    named_params = trainable_parameters(model)
    params = list(named_params.values())
    device = params[0].device
    total_steps = count_local_steps(len(examples), args)
    n_warmup = warmup_steps(total_steps, args.warmup_ratio)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    objective = OBJECTIVES[args.head]
    collate = objective.collate
    if args.pack_capacity is not None:
        if args.head != "causal_lm":
            raise ValueError(f"train.packing applies to causal language modelling, not a {args.head} head")
        collate = partial(collate_packed_causal_lm, capacity=args.pack_capacity)
    # fp16 gradients can underflow: scale the loss, unscale before the hook and clipping, skip bad steps.
    scaler = torch.amp.GradScaler(device.type) if args.mixed_precision == "fp16" else None
    model.train()
    loss_sum, token_total = 0.0, 0
    for step, idx in enumerate(batch_order(len(examples), total_steps, args.batch_size, rng)):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step, total_steps, n_warmup, args.schedule)
        micro = [
            collate([examples[i] for i in idx[j : j + args.micro_batch_size]], args.pad_id, args.mask_prompt)
            for j in range(0, len(idx), args.micro_batch_size)
        ]
        step_tokens = sum(objective.count(b) for b in micro)
        if step_tokens == 0:
            continue
        for batch in micro:
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(device, args.mixed_precision):
                loss = objective.loss_sum(model, batch)
            step_loss = loss / step_tokens
            (step_loss if scaler is None else scaler.scale(step_loss)).backward()
            loss_sum += float(loss.detach())
        token_total += step_tokens
        if scaler is not None:
            scaler.unscale_(optimizer)
        if hook is not None:
            hook.correct_gradients(named_params)
        if args.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if on_step is not None:
            on_step(step + 1, total_steps)
    model.eval()
    state = get_trainable_state(model)
    finish_update = getattr(hook, "finish_update", None)
    if finish_update is not None:
        state = finish_update(state)
    return ClientUpdate(
        client_id=client_id,
        state=state,
        num_examples=len(examples),
        num_steps=total_steps,
        train_loss=loss_sum / max(token_total, 1),
        seconds=time.perf_counter() - start,
    )
