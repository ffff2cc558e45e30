"""Mutual knowledge distillation between two trainable states of one model (FedKD-LoRA, S1).

The teacher and the student share the frozen base and differ only by their trainable state, so one model
in memory serves both (DESIGN principle 3): each optimizer step loads one state, steps it with its own
AdamW, and reads it back. Notable choices:
- The distillation term is KL(softmax(z_other / T) || softmax(z_self / T)) * T^2 on log-softmax outputs
  (S1 compared raw logits), over the scored positions only: response tokens of a language model, one row
  per example of a classifier.
- Each model's loss is (1 - alpha) * cross-entropy on the server's labels + alpha * the distillation term
  (+ attention_weight * MSE between the attention maps of the two models, if set).
- The target distribution of each step comes from the other model in eval mode (no dropout) before
  either steps, so the two updates of a step are symmetric.
- Batches of ``micro_batch_size`` examples at the constant peak LR of local training; the same prompt
  masking as local training (``data.train_on_inputs``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedpeft.fl.client_round import OBJECTIVES, LocalTrainingArgs, batch_order
from fedpeft.models.heads import scored_outputs
from fedpeft.models.state import get_trainable_state, set_trainable_state, trainable_parameters
from fedpeft.tensors import TensorDict
from fedpeft.tensors.batching import TokenizedExample


@dataclass(frozen=True)
class DistillationArgs:
    temperature: float
    alpha: float
    attention_weight: float
    steps: int


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over rows of T^2 * KL(softmax(teacher / T) || softmax(student / T)), from log-softmax outputs."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return kl * temperature**2


def attention_loss(mine: Sequence[torch.Tensor], theirs: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """MSE between two models' attention maps over all layers and heads, on real (unpadded) query rows."""
    rows = mask[:, None, :, None].to(mine[0].dtype)
    total = sum(((a - b) ** 2 * rows).sum() for a, b in zip(mine, theirs, strict=True))
    return total / (rows.sum() * mine[0].shape[1] * mine[0].shape[-1] * len(mine))


@contextmanager
def eager_attention(model: torch.nn.Module, needed: bool) -> Iterator[None]:
    """Attention maps are only returned by eager attention; switch to it for the block if needed."""
    inner = getattr(getattr(model, "base_model", model), "model", model)
    before = getattr(inner.config, "_attn_implementation", None)
    if not needed or before == "eager":
        yield
        return
    inner.set_attn_implementation("eager")
    try:
        yield
    finally:
        inner.set_attn_implementation(before)


def mutual_distillation(
    model: torch.nn.Module,
    student: TensorDict,
    teacher: TensorDict,
    examples: Sequence[TokenizedExample],
    train: LocalTrainingArgs,
    kd: DistillationArgs,
    rng: np.random.Generator,
) -> tuple[TensorDict, TensorDict, dict[str, float]]:
    """``kd.steps`` steps of mutual distillation on ``examples``; returns (student, teacher, mean losses)."""
    if not examples:
        raise ValueError("mutual distillation needs server data; it has none")
    head = train.head
    objective = OBJECTIVES[head]
    collate = objective.collate
    params = list(trainable_parameters(model).values())
    device = params[0].device
    optimizers = {
        "student": torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay),
        "teacher": torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay),
    }
    states = {"student": student, "teacher": teacher}
    sums = {"student": 0.0, "teacher": 0.0}
    want_maps = kd.attention_weight > 0
    with eager_attention(model, want_maps):
        for idx in batch_order(len(examples), kd.steps, train.micro_batch_size, rng):
            batch = collate([examples[i] for i in idx], train.pad_id, train.mask_prompt)
            if objective.count(batch) == 0:
                continue  # nothing scored in this batch (every response cut off): no loss to distil
            batch = {k: v.to(device) for k, v in batch.items()}
            targets = {}
            model.eval()
            with torch.no_grad():
                for who, state in states.items():
                    set_trainable_state(model, state)
                    logits, _, maps = scored_outputs(model, batch, head, attentions=want_maps)
                    targets[who] = (logits, maps)
            model.train()
            for who, other in (("student", "teacher"), ("teacher", "student")):
                set_trainable_state(model, states[who])
                logits, labels, maps = scored_outputs(model, batch, head, attentions=want_maps)
                loss = (1 - kd.alpha) * F.cross_entropy(logits.float(), labels) + kd.alpha * distillation_loss(
                    logits, targets[other][0], kd.temperature
                )
                if want_maps:
                    mask = batch["attention_mask"]
                    loss = loss + kd.attention_weight * attention_loss(maps, targets[other][1], mask)
                loss.backward()
                if train.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, train.max_grad_norm)
                optimizers[who].step()
                optimizers[who].zero_grad(set_to_none=True)
                states[who] = get_trainable_state(model)
                sums[who] += float(loss.detach())
    model.eval()
    figures = {f"kd_{who}_loss": total / kd.steps for who, total in sums.items()}
    return states["student"], states["teacher"], figures
