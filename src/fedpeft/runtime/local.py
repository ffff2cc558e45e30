"""The in-process runtime: one base model in memory serves every client; clients differ only by the
trainable state loaded into it for their turn (DESIGN principle 3)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fedpeft.fl.client_round import ClientHook, ClientUpdate, LocalTrainingArgs, count_local_steps, train_client_round
from fedpeft.seeding import numpy_rng, torch_rng_scope
from fedpeft.tensors import TensorDict
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


class LocalRuntime:
    def __init__(
        self,
        model: torch.nn.Module,
        client_examples: Sequence[Sequence[TokenizedExample]],
        args: LocalTrainingArgs,
        seed: int,
    ):
        self.model = model
        self.client_examples = client_examples
        self.args = args
        self.seed = seed

    def train_round(
        self,
        server_round: int,
        client_ids: Sequence[int],
        global_state: TensorDict,
        on_client_start: Callable[[int, int], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        hook_for: Callable[[int], ClientHook | None] | None = None,
    ) -> list[ClientUpdate]:
        """Train each sampled client from ``global_state``; batch order and dropout are seeded by
        (run seed, round, client) so any client round replays identically. ``hook_for(client)`` gives
        the strategy's change to that client's local training."""
        updates = []
        for cid in client_ids:
            examples = self.client_examples[cid]
            if on_client_start is not None:
                on_client_start(cid, count_local_steps(len(examples), self.args))
            rng: np.random.Generator = numpy_rng(self.seed, "train", server_round, cid)
            with torch_rng_scope(self.seed, "train", server_round, cid):
                hook = hook_for(cid) if hook_for is not None else None
                updates.append(
                    train_client_round(
                        self.model, cid, global_state, examples, self.args, rng, on_step=on_step, hook=hook
                    )
                )
            release_freed_memory()
        return updates
