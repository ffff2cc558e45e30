"""FedKD-LoRA (S1): FedAvg of the clients' adapters, then mutual distillation on the server between the
averaged student and a server-held teacher.

The teacher is the same base with its own adapter, fine-tuned once on the server's public rows
(``data.server_fraction``) before the first distillation (S1 retrained it every round on the same data) and
checkpointed with the strategy, so a resumed run continues with the same teacher. After each FedAvg the two
distil into each other for ``distill_epochs`` over the server rows (:mod:`fedpeft.fl.distillation`); the
student goes out to the clients.

``data.server_split`` chooses the published setting (``held_out``: the server's rows are extra data no client
has) or the fair one (``shared``: they are a sample of the clients' own rows, so FedKD sees no more data than
the baselines).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fedpeft.fl.client_round import ClientUpdate, train_client_round
from fedpeft.fl.distillation import DistillationArgs, mutual_distillation
from fedpeft.fl.strategies.base import Aggregate, ServerContext, Strategy, register_strategy, setting
from fedpeft.fl.strategies.fedavg import example_weighted_mean
from fedpeft.fl.strategies.state import pack_state, unpack_state
from fedpeft.seeding import numpy_rng, torch_rng_scope
from fedpeft.tensors import TensorDict


@dataclass(frozen=True)
class FedKDSettings:
    temperature: float = setting(2.0, "Softmax temperature T of the distillation term (scaled by T^2).")
    alpha: float = setting(0.5, "Weight of the distillation term; 1 - alpha weighs the cross-entropy on labels.")
    attention_weight: float = setting(0.0, "Weight of the MSE between teacher and student attention maps (0: off).")
    teacher_epochs: float = setting(3.0, "Epochs the teacher is fine-tuned on the server rows, once.")
    distill_epochs: float = setting(1.0, "Epochs of mutual distillation on the server rows after each FedAvg.")

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha} must be in [0, 1]")
        if self.attention_weight < 0:
            raise ValueError(f"attention_weight={self.attention_weight} must be >= 0")
        if self.teacher_epochs <= 0 or self.distill_epochs <= 0:
            raise ValueError("teacher_epochs and distill_epochs must be > 0")


@register_strategy("fedkd")
class FedKD(Strategy):
    """FedAvg, then mutual distillation with a server teacher on public rows (FedKD-LoRA)."""

    Settings = FedKDSettings

    def __init__(self, settings: Any = None):
        super().__init__(settings)
        self.teacher: TensorDict | None = None

    def check_context(self, context: ServerContext) -> None:
        if not context.server_data:
            raise ValueError(
                "fl.strategy=fedkd needs server data for its teacher and the distillation: set data.server_fraction "
                "> 0 (data.server_split=held_out for the published setting, shared for the fair one)"
            )
        if context.args.head == "embedding":
            raise ValueError(
                "fl.strategy=fedkd distils output distributions; an embedding model (code_search) has none"
            )
        if context.lora_aggregation != "separate":
            raise ValueError(
                "fl.strategy=fedkd loads the averaged adapter into the model to distil it, so it needs "
                f"fl.lora_aggregation=separate, not {context.lora_aggregation!r}"
            )

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        ctx = self.require_context(context)
        figures: dict[str, float] = {}
        student = example_weighted_mean(updates, server_round)
        if self.teacher is None:
            teacher = train_teacher(ctx, global_state, self.settings.teacher_epochs)
            self.teacher = teacher.state
            figures["kd_teacher_train_loss"] = teacher.train_loss
        s = self.settings
        kd = DistillationArgs(s.temperature, s.alpha, s.attention_weight, distill_steps(ctx, s.distill_epochs))
        with torch_rng_scope(ctx.seed, "distill", server_round):
            student, self.teacher, distilled = mutual_distillation(
                ctx.model,
                student,
                self.teacher,
                ctx.server_data,
                ctx.args,
                kd,
                numpy_rng(ctx.seed, "distill", server_round),
            )
        return Aggregate(student, figures | distilled)

    def state_dict(self) -> dict[str, Any]:
        return pack_state(teacher=self.teacher or {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher = unpack_state(self.name, state, tensors=("teacher",))["teacher"] or None


def distill_steps(context: ServerContext, epochs: float) -> int:
    """Optimizer steps of ``epochs`` over the server rows (at least one)."""
    return max(1, math.ceil(epochs * math.ceil(len(context.server_data) / context.args.micro_batch_size)))


def train_teacher(context: ServerContext, start: TensorDict, epochs: float) -> ClientUpdate:
    """The teacher: ``start`` fine-tuned on the server rows for ``epochs``, with its own generators."""
    args = replace(context.args, epochs=epochs, max_steps=None)
    with torch_rng_scope(context.seed, "teacher"):
        return train_client_round(
            context.model, -1, start, context.server_data, args, numpy_rng(context.seed, "teacher")
        )
