"""One seeded generator per purpose. Every random draw in a run comes from a generator derived from
(run seed, purpose, keys such as round and client), never from reseeding global state, so a round can
be replayed exactly from the seed alone; this is what makes ``--resume`` bit-exact."""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator

import numpy as np
import torch

PURPOSES = ("data", "sampling", "init", "train", "teacher", "distill", "dp_noise")


def _entropy(seed: int, purpose: str, keys: tuple[int, ...]) -> list[int]:
    if purpose not in PURPOSES:
        raise ValueError(f"unknown randomness purpose {purpose!r}; known: {PURPOSES}")
    return [seed, zlib.crc32(purpose.encode()), *keys]


def numpy_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(_entropy(seed, purpose, keys)))


def torch_seed(seed: int, purpose: str, *keys: int) -> int:
    return int(np.random.SeedSequence(_entropy(seed, purpose, keys)).generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def torch_rng_scope(seed: int, purpose: str, *keys: int) -> Iterator[None]:
    """Run a block (dropout, weight init) on a derived torch seed and restore the caller's RNG state after."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(torch_seed(seed, purpose, *keys))
        yield
