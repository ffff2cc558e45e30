"""The in-process runtime: one base model in memory serves every client; clients differ only by the
trainable state loaded into it for their turn (DESIGN principle 3)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch

from fedpeft.fl.client_round import ClientHook, ClientUpdate, LocalTrainingArgs, count_local_steps, train_client_round
from fedpeft.fl.lora_ranks import ClientRanks
from fedpeft.runtime.base import RUNTIMES, ClientEvaluation, ClientEvaluator, Launch, RunResult, RuntimeLauncher
from fedpeft.seeding import numpy_rng, torch_rng_scope
from fedpeft.tensors import TensorDict, through_transport
from fedpeft.tensors.batching import TokenizedExample


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand heap pages freed by the last client's activations back to the OS (glibc's malloc_trim).

    Without it, glibc keeps them and the resident set creeps up with the number of client rounds (seen:
    peak RSS 1.4x higher with 20 clients than with 2 on the same steps). A no-op where malloc_trim is
    missing (macOS, musl).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


POOLED = -1
"""Client id of the centralised baseline's one update (trained on the union of the sampled clients' rows)."""
POOLED_SEED_KEY = 2**31 - 1
"""Seed key of the pooled round: distinct from every client id (seed keys must be non-negative)."""


class LocalRuntime:
    def __init__(
        self,
        model: torch.nn.Module,
        client_examples: Mapping[int, Sequence[TokenizedExample]] | Sequence[Sequence[TokenizedExample]],
        args: LocalTrainingArgs,
        seed: int,
        ranks: ClientRanks | None = None,
        transport: torch.dtype | None = None,
        evaluator: ClientEvaluator | None = None,
    ):
        self.model = model
        self.client_examples = client_examples
        self.args = args
        self.seed = seed
        self.ranks = ranks
        """Clients of different LoRA ranks (``peft.client_ranks``); None: all at the global rank."""
        self.transport = transport
        """``fl.transport_dtype``: states reach the client and come back rounded to it (None: as they are)."""
        self.evaluator = evaluator
        """A client's metrics of a state on its validation rows (the experiment's; None: cannot evaluate)."""

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
        """Train each sampled client from ``global_state`` (or, for personalised strategies, from its own
        entry in ``client_states`` where it has one); batch order and dropout are seeded by (run seed,
        round, client) so any client round replays identically. ``hook_for(client, start)`` gives the
        strategy's change to that client's local training, given the state the client starts from (at its
        own rank). Updates come back at the global rank and scaling. ``on_client_failed`` is the runtime
        interface's report of a lost client; in one process an exception is the run's, so it is not called."""
        updates = []
        for cid in client_ids:
            examples = self.client_examples[cid]
            if on_client_start is not None:
                on_client_start(cid, count_local_steps(len(examples), self.args))
            start = through_transport((client_states or {}).get(cid, global_state), self.transport)
            view = self.ranks.to_client(start, cid) if self.ranks else start
            scaling = self.ranks.client_scaling(self.model, cid) if self.ranks else nullcontext()
            rng: np.random.Generator = numpy_rng(self.seed, "train", server_round, cid)
            with torch_rng_scope(self.seed, "train", server_round, cid), scaling:
                hook = hook_for(cid, view) if hook_for is not None else None
                update = train_client_round(self.model, cid, view, examples, self.args, rng, on_step=on_step, hook=hook)
            update = replace(update, state=through_transport(update.state, self.transport))
            if self.ranks:
                update = replace(update, state=self.ranks.from_client(update.state, start, cid))
            updates.append(update)
            release_freed_memory()
        return updates

    def train_pooled(
        self,
        server_round: int,
        client_ids: Sequence[int],
        global_state: TensorDict,
        on_client_start: Callable[[int, int], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[ClientUpdate]:
        """One update trained on the union of the clients' rows for the sum of their step budgets (the
        centralised baseline), reported as client ``POOLED``."""
        pooled = [e for cid in client_ids for e in self.client_examples[cid]]
        budget = sum(count_local_steps(len(self.client_examples[cid]), self.args) for cid in client_ids)
        args = replace(self.args, max_steps=budget)
        if on_client_start is not None:
            on_client_start(POOLED, budget)
        rng = numpy_rng(self.seed, "train", server_round, POOLED_SEED_KEY)
        with torch_rng_scope(self.seed, "train", server_round, POOLED_SEED_KEY):
            update = train_client_round(self.model, POOLED, global_state, pooled, args, rng, on_step=on_step)
        release_freed_memory()
        return [update]

    def evaluate_clients(
        self,
        server_round: int,
        states: Mapping[int, TensorDict],
        thresholds: Mapping[int, float] | None = None,
        on_client_failed: Callable[[int, str], None] | None = None,
    ) -> dict[int, ClientEvaluation]:
        """Each client's metrics of its state on its validation rows, here (its rows are in this process)."""
        if self.evaluator is None:
            raise ValueError("this LocalRuntime was built without a client evaluator")
        return {cid: self.evaluator(cid, state, (thresholds or {}).get(cid)) for cid, state in states.items()}

    def close(self) -> None:
        """Nothing to release: the model belongs to the run."""


@RUNTIMES.register("local")
class LocalLauncher(RuntimeLauncher):
    """Every client in this process, over one base model (the default; the fastest way to simulate)."""

    in_process = True

    def launch(self, job: Launch) -> RunResult:
        return job.run_here(None)
