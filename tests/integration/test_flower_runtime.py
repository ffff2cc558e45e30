"""The Flower runtime runs the same job: the same client round and strategy behind a Flower Grid give the
same global adapter as the local runtime, and no Flower or Ray process outlives the run."""

from __future__ import annotations

import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from fedpeft.config import ConfigError
from fedpeft.experiment.run import run_experiment

# Runtime equivalence holds bit for bit when every side runs the same arithmetic (conftest.one_thread).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TWO_BY_TWO = ["fl.clients=2", "fl.rounds=2", "fl.fraction=1.0"]


def ray_processes() -> list[str]:
    names = ("raylet", "gcs_server", "ray::", "default_worker", "dashboard")
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        text = " ".join([proc.info["name"] or "", *(proc.info["cmdline"] or [])])
        if any(n in text for n in names):
            found.append(text[:120])
    return found


def ray_processes_after_shutdown(seconds: float = 30.0) -> list[str]:
    """Ray's processes still alive once they have had ``seconds`` to exit (actors stop asynchronously
    after ray.shutdown)."""
    deadline = time.monotonic() + seconds
    while (alive := ray_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


def adapter(run_dir) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def assert_same_run(local_dir, local, flower_dir, flower):
    """A Flower run reproduces a local one exactly: the global adapter bit for bit, final loss and bytes.
    The Flower runtimes move float32 tensors unchanged and train with the same client code, so with the same
    thread count on both sides (the ``one_thread`` fixture) nothing may differ; a tolerance would hide a
    transport that rounds."""
    assert flower["status"] == "completed" and flower["rounds_completed"] == 2
    a, b = adapter(local_dir), adapter(flower_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
    assert flower["final_eval"]["loss"] == local["final_eval"]["loss"]
    assert flower["bytes_up"] == local["bytes_up"] and flower["bytes_down"] == local["bytes_down"]


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_flower_simulation_gives_the_local_runtime_s_adapter(micro_config, strategy):
    extra = [*TWO_BY_TWO, f"fl.strategy={strategy}"] + (["fl.strategy_args.mu=0.5"] if strategy == "fedprox" else [])
    local_dir, local = run_experiment(micro_config(*extra), quiet=True)
    flower_dir, flower = run_experiment(micro_config(*extra, "runtime=flower-sim"), quiet=True)
    assert_same_run(local_dir, local, flower_dir, flower)
    assert not ray_processes_after_shutdown()


@pytest.mark.parametrize(("strategy", "message"), [("scaffold", "reads server state"), ("centralised", "pools")])
def test_strategies_that_need_one_process_are_refused_on_flower(micro_config, tmp_path, strategy, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(micro_config(*TWO_BY_TWO, f"fl.strategy={strategy}", "runtime=flower-sim"), quiet=True)
    assert not (tmp_path / "runs").exists()
    assert not ray_processes_after_shutdown()
