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


ADAM_MAX_STEP = 0.1 / 0.001**0.5
"""The largest move of one element in one AdamW step, in units of the learning rate: (1 - beta1) / sqrt(1 -
beta2) with torch's default betas (0.9, 0.999), reached when a gradient jumps from ~0."""


def assert_updates_agree(a: dict, b: dict, lr: float, steps: int, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Two client updates from the same data whose float sums were taken in another order (packed vs padded
    rows, accumulated micro-batches, another library's kernel). AdamW normalises each element's gradient by its
    own running magnitude, so an element whose gradient is ~0 can move by a whole step on a last-bit
    difference: every element must stay within ``steps`` such steps (plus weight decay's share), and all but
    1% of the elements within rtol/atol. A wrong update (another loss normalisation, a dropped micro-batch)
    moves most elements far beyond that."""
    import torch

    assert a.keys() == b.keys()
    x = torch.cat([a[k].detach().flatten().double() for k in a])
    y = torch.cat([b[k].detach().flatten().double() for k in a])
    diff = (x - y).abs()
    bound = steps * lr * (ADAM_MAX_STEP + 1)
    assert float(diff.max()) <= bound, f"max |diff| {float(diff.max()):.3g} > {steps} AdamW steps ({bound:.3g})"
    loose = diff > atol + rtol * y.abs()
    assert float(loose.double().mean()) <= 0.01, f"{int(loose.sum())} of {diff.numel()} elements beyond rtol/atol"
