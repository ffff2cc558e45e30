from __future__ import annotations

from pathlib import Path

import pytest

from fedpeft.config import RunConfig, load_config

MICRO = [
    "model.name=builtin:micro",
    "data.max_rows=120",
    "data.test_size=12",
    "data.max_length=256",
    "data.partition=iid",
    "fl.clients=2",
    "fl.rounds=2",
    "fl.fraction=1.0",
    "train.max_steps=3",
    "train.batch_size=4",
    "train.micro_batch_size=4",
    "train.lr=0.01",
    "eval.batch_size=16",
]


@pytest.fixture
def micro_config(tmp_path: Path):
    """A seconds-long run of the default recipe on the micro model, writing under tmp_path."""

    def make(*overrides: str) -> RunConfig:
        return load_config("default", [*MICRO, f"output.dir={tmp_path / 'runs'}", *overrides])

    return make


@pytest.fixture
def one_thread(monkeypatch: pytest.MonkeyPatch):
    """The same arithmetic on both sides of a runtime-equivalence test: torch runs one intra-op thread here
    and in every process the test starts (Ray's actors, Flower's SuperNodes and ClientApps inherit the
    environment). With different thread counts (Ray gives an actor OMP_NUM_THREADS=1, this process has one
    per core, and BLAS may drop threads on a loaded machine) float sums are taken in another order, and
    AdamW turns a near-zero gradient's last-bit difference into a full step of the learning rate."""
    import torch

    previous = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
