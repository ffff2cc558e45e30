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
