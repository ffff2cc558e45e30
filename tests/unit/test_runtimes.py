"""The runtime registry and what importing the runtimes costs: the three runtimes are registered with their
summaries, importing them brings in no Flower (nor the test helpers), and the deployment plumbing stands
alone. The ClientApp's fault hook, which the entry points fill with the fault drill, acts as the drill says."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from fedpeft.runtime.base import RUNTIMES
from fedpeft.testing import FAULT_ENV, fault_drill


def imported_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after ``statement``."""
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def test_runtimes_lists_exactly_the_three_runtimes_with_their_summaries():
    rows = RUNTIMES.describe()
    assert [name for name, _, _ in rows] == ["flower-deployment", "flower-sim", "local"]
    assert all(summary for _, summary, _ in rows)


def test_importing_the_runtimes_imports_neither_flower_nor_the_test_helpers():
    modules = imported_after("import fedpeft.runtime, fedpeft.runtime.flower")
    assert "fedpeft.runtime.flower.launch" in modules  # the registry is complete
    assert "flwr" not in modules
    assert not any(m.startswith("fedpeft.testing") for m in modules)


def test_the_deployment_plumbing_imports_no_runtime_experiment_or_cli():
    modules = imported_after("import fedpeft.deploy")
    above = ("fedpeft.runtime", "fedpeft.experiment", "fedpeft.cli", "fedpeft.testing", "flwr")
    assert not [m for m in modules if m.startswith(above)]


@dataclass
class Update:
    state: dict


def test_the_fault_drill_wraps_a_client_round_as_its_kind_says(monkeypatch):
    start = {"a": torch.ones(2, 3)}
    trained: list[int] = []

    def train(state):
        trained.append(1)
        return Update({"a": state["a"] * 2})

    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert torch.equal(fault_drill(1, 0, start, train).state["a"], start["a"] * 2)
    monkeypatch.setenv(FAULT_ENV, "raise:2:1,nan:3:*,shape:4:0")
    with pytest.raises(RuntimeError, match="fault drill"):
        fault_drill(2, 1, start, train)
    assert len(trained) == 1  # raised before training
    assert torch.isnan(fault_drill(3, 5, start, train).state["a"]).all()
    assert fault_drill(4, 0, start, train).state["a"].shape == (1, 3)
    monkeypatch.setenv(FAULT_ENV, "explode:*:*")
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        fault_drill(1, 0, start, train)
    assert len(trained) == 3  # an unknown drill fails before training
