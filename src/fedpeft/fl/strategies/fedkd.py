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
from fedpeft.fl.strategies.base import ServerContext, Strategy, register_strategy, setting
from fedpeft.fl.strategies.fedavg import example_weighted_mean
from fedpeft.seeding import numpy_rng, torch_rng_scope
from fedpeft.tensors import TensorDict

_TEACHER = "teacher/"


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
        self.context: ServerContext | None = None
        self.teacher: TensorDict | None = None
        self.figures: dict[str, float] = {}

    def bind(self, context: ServerContext) -> None:
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
        self.context = context

    def _steps(self, epochs: float) -> int:
        ctx = self.context
        return max(1, math.ceil(epochs * math.ceil(len(ctx.server_data) / ctx.args.micro_batch_size)))

    def _train_teacher(self, start: TensorDict) -> TensorDict:
        ctx = self.context
        args = replace(ctx.args, epochs=self.settings.teacher_epochs, max_steps=None)
        with torch_rng_scope(ctx.seed, "teacher"):
            update = train_client_round(ctx.model, -1, start, ctx.server_data, args, numpy_rng(ctx.seed, "teacher"))
        self.figures["kd_teacher_train_loss"] = update.train_loss
        return update.state

    def aggregate(self, global_state: TensorDict, updates: Sequence[ClientUpdate], server_round: int) -> TensorDict:
        if self.context is None:
            raise RuntimeError("fedkd must be bound to the run (Strategy.bind) before it aggregates")
        self.figures = {}
        student = example_weighted_mean(updates, server_round)
        if self.teacher is None:
            self.teacher = self._train_teacher(global_state)
        s = self.settings
        kd = DistillationArgs(s.temperature, s.alpha, s.attention_weight, self._steps(s.distill_epochs))
        ctx = self.context
        with torch_rng_scope(ctx.seed, "distill", server_round):
            student, self.teacher, figures = mutual_distillation(
                ctx.model,
                student,
                self.teacher,
                ctx.server_data,
                ctx.args,
                kd,
                numpy_rng(ctx.seed, "distill", server_round),
            )
        self.figures |= figures
        return student

    def round_figures(self) -> dict[str, float]:
        return dict(self.figures)

    def state_dict(self) -> dict[str, Any]:
        return {_TEACHER + k: v for k, v in (self.teacher or {}).items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = [k for k in state if not k.startswith(_TEACHER)]
        if unknown:
            raise ValueError(f"fedkd checkpoint state has unknown keys {unknown[:5]}")
        self.teacher = {k.removeprefix(_TEACHER): v for k, v in state.items()} or None
