"""The SuperNode's long-lived node worker for real: ``fedpeft supernode``'s supervisor (no process outlives
it, a dead worker is replaced), and a loopback deployment whose nodes run their ClientApps through workers
that gives the local run's adapter, loads the model once per node, and leaves no worker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import torch

from fedpeft.experiment.run import run_experiment
from fedpeft.reporting.checkpoint import list_checkpoints, load_checkpoint
from fedpeft.testing import LoopbackFederation
from tests.integration.test_flower_runtime import TWO_BY_TWO, adapter, assert_same_run

SUPERVISOR = textwrap.dedent(
    """
    import sys, time
    from fedpeft.deploy import run_node

    WORKER = "from fedpeft.runtime.flower.worker import serve; serve(sys.argv[1], None)"
    def worker(socket):
        return [sys.executable, "-c", "import sys; " + WORKER, socket]
    def supernode(socket):
        return [sys.executable, "-c", "import time; time.sleep(300)"]
    sys.exit(run_node(supernode, worker))
    """
)


def children(pid: int) -> dict[str, int]:
    """The supervisor's children: {"worker" | "supernode": pid}."""
    found = {}
    for child in psutil.Process(pid).children():
        try:
            found["worker" if "serve(" in " ".join(child.cmdline()) else "supernode"] = child.pid
        except psutil.Error:  # a child that just exited
            continue
    return found


def start_supervisor(tmp_path: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR], stderr=open(tmp_path / "node.log", "w"), start_new_session=True
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = children(proc.pid)
        if len(found) == 2:
            return proc, found
        time.sleep(0.1)
    proc.kill()
    raise AssertionError((tmp_path / "node.log").read_text())


def gone(pids, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_no_process_outlives_fedpeft_supernode(tmp_path, how):
    """SIGTERM / SIGINT: the supervisor stops both children; SIGKILL (it cannot): the kernel's parent-death
    signal does."""
    proc, kids = start_supervisor(tmp_path)
    os.kill(proc.pid, getattr(signal, how))
    proc.wait(timeout=30)
    assert gone(kids.values()), (tmp_path / "node.log").read_text()


def test_a_worker_that_dies_is_replaced(tmp_path):
    proc, kids = start_supervisor(tmp_path)
    try:
        os.kill(kids["worker"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and children(proc.pid).get("worker") in (None, kids["worker"]):
            time.sleep(0.1)
        assert children(proc.pid).get("worker") not in (None, kids["worker"])
        assert "the node worker exited (code -9); starting a fresh one" in (tmp_path / "node.log").read_text()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert gone([kids["supernode"]])


@pytest.fixture
def federation(tmp_path):
    fed = LoopbackFederation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()
    assert not fed.survivors()
    assert not fed.workers()


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_deployment_through_node_workers_gives_the_local_run_and_loads_the_model_once(micro_config, federation):
    """Node 0 runs its ClientApp through its worker, node 1 without one (Flower's process per message): the
    run equals the local one; node 0's worker kept its pid and built the run's side once over every message
    of the run (queries, two train rounds, evaluations); after stop() no worker is left."""
    federation.superlink()
    federation.supernode(0, 2)
    federation.supernode(1, 2, worker=False)
    deadline = time.monotonic() + 120
    while len(federation.workers()) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    before = federation.workers()
    assert len(before) == 1
    local_dir, local = run_experiment(micro_config(*TWO_BY_TWO), quiet=True)
    deployed = micro_config(*TWO_BY_TWO, "runtime=flower-deployment", f"flower.superlink={federation.address}")
    flower_dir, flower = run_experiment(deployed, quiet=True)
    assert_same_run(local_dir, local, flower_dir, flower)
    assert federation.workers() == before  # the same worker process answered every message
    log = federation.log("supernode-0")
    assert log.count("built the client side of run") == 1, log
    assert "build 1 of this worker" in log
    assert "built the client side" not in federation.log("supernode-1")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_secagg_plus_through_node_workers(micro_config, federation):
    """SecAgg+'s client mod stays in the thin ClientApp (its state is Flower's context there) and only the
    round inside it reaches the worker: the run completes with the secure aggregate of the local run's
    updates (quantization precision, as on flower-sim)."""
    federation.superlink()
    for i in range(2):
        federation.supernode(i, 2)
    local_dir, _ = run_experiment(micro_config(*TWO_BY_TWO), quiet=True)
    secure = micro_config(
        *TWO_BY_TWO,
        "runtime=flower-deployment",
        f"flower.superlink={federation.address}",
        "flower.secure_aggregation=true",
    )
    flower_dir, flower = run_experiment(secure, quiet=True)
    assert flower["status"] == "completed" and flower["rounds_completed"] == 2
    first_local, first_secure = (load_checkpoint(list_checkpoints(d)[0]).global_state for d in (local_dir, flower_dir))
    for key in first_local:
        torch.testing.assert_close(first_secure[key], first_local[key], rtol=0, atol=2e-5)
    a, b = adapter(local_dir), adapter(flower_dir)
    assert max(float((a[k] - b[k]).abs().mean()) for k in a) < 1e-4
    for i in range(2):
        assert federation.log(f"supernode-{i}").count("built the client side of run") == 1
