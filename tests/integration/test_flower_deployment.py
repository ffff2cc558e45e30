"""A real Flower deployment on 127.0.0.1: a SuperLink and one SuperNode per client, started with fedpeft's
helpers (`fedpeft superlink`, `fedpeft supernode`), runs the recipe submitted by `runtime:
flower-deployment` and gives the local runtime's global adapter; with TLS and SuperNode authentication
too. Every process started here is stopped, and checked to be gone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from fedpeft.deploy import flower_env, free_port, make_certificates, make_node_keys
from fedpeft.experiment.run import run_experiment
from fedpeft.runtime.flower import FlowerConnectionError, FlowerRoundError
from fedpeft.testing import FAULT_ENV, LoopbackFederation
from tests.integration.test_flower_runtime import TWO_BY_TWO, adapter, assert_same_run

# Equivalence with the local runtime needs the same arithmetic on both sides (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def federation(tmp_path):
    fed = LoopbackFederation(tmp_path)
    try:
        yield fed
    finally:
        fed.stop()
    assert not fed.survivors()


@pytest.mark.slow
def test_loopback_deployment_gives_the_local_runtime_s_adapter(micro_config, federation):
    """With LoRA rank 4096 on the micro model every message carries 8.9 MB of adapter, above gRPC's default
    4 MB message size: Flower splits arrays into chunks, and the result is still the local one."""
    federation.superlink()
    for i in range(2):
        federation.supernode(i, 2)
    big = [*TWO_BY_TWO, "peft.r=4096"]
    local_dir, local = run_experiment(micro_config(*big), quiet=True)
    deployed = micro_config(*big, "runtime=flower-deployment", f"flower.superlink={federation.address}")
    flower_dir, flower = run_experiment(deployed, quiet=True)
    assert_same_run(local_dir, local, flower_dir, flower)
    assert "runtime: flower-deployment" in (flower_dir / "config.yaml").read_text()
    lines = (flower_dir / "metrics.jsonl").read_text().splitlines()
    sizes = [r["bytes_up"] for r in map(json.loads, lines) if r["type"] == "client"]
    assert len(sizes) == 4 and min(sizes) > 8 * 2**20  # each update, and each download, over 8 MiB


@pytest.mark.slow
def test_a_silent_supernode_fails_the_round_below_min_clients_and_the_restarted_run_resumes(micro_config, federation):
    """SuperNode 1 stops answering in round 2 (its ClientApp sleeps past flower.round_timeout): with
    fl.min_clients=2 the round fails with the client's reason and the run keeps round 1. Once a new
    SuperNode holds client 1, the run resubmitted with --resume finishes with the uninterrupted run's adapter."""
    three = [*TWO_BY_TWO, "fl.rounds=3"]
    federation.superlink()
    federation.supernode(0, 2)
    silent = federation.supernode(1, 2, env={FAULT_ENV: "sleep=300:2:1"})
    deployed = micro_config(
        *three,
        "fl.min_clients=2",
        "runtime=flower-deployment",
        f"flower.superlink={federation.address}",
        "flower.round_timeout=60",  # a deployed client round starts a fresh process: ~15 s here
    )
    with pytest.raises(FlowerRoundError, match="ended failed") as failed:
        run_experiment(deployed, quiet=True)
    message = str(failed.value)
    assert "round 2: 1 usable client update(s), fewer than fl.min_clients=2" in message
    assert "client 1: no reply within flower.round_timeout=60.0 s" in message
    (run_dir,) = (Path(deployed.output.dir)).iterdir()
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 1
    federation.kill(silent)
    federation.supernode(1, 2, name="supernode-1-restarted")
    resumed_dir, resumed = run_experiment(resume_dir=run_dir, quiet=True)
    assert resumed_dir == run_dir and resumed["status"] == "completed" and resumed["rounds_completed"] == 3
    local_dir, _ = run_experiment(
        micro_config(*three, "output.dir=" + str(run_dir.parent.parent / "local")), quiet=True
    )
    a, b = adapter(local_dir), adapter(resumed_dir)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_unreachable_superlink_is_an_error_naming_the_address(micro_config, tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    config = micro_config(*TWO_BY_TWO, "runtime=flower-deployment", f"flower.superlink={address}")
    with pytest.raises(FlowerConnectionError, match=f"SuperLink unreachable at {address}"):
        run_experiment(config, quiet=True)
    assert not (tmp_path / "runs").exists()


def flwr_cli(tmp: Path, address: str, ca: Path, *args: str) -> subprocess.CompletedProcess:
    """The Flower CLI against this federation's SuperLink over TLS."""
    from fedpeft.deploy import connection_toml, flower_executable

    home = tmp / "flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(connection_toml("test", address, str(ca)))
    env = {**flower_env(), "FLWR_HOME": str(home)}
    return subprocess.run([flower_executable("flwr"), *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_tls_and_supernode_authentication(micro_config, federation, tmp_path):
    certs = tmp_path / "certs"
    ca, _, _ = make_certificates(certs)
    keys = make_node_keys(certs, 3)
    federation.superlink("--certificates", str(certs), "--supernode-auth")
    for i in range(2):  # nodes 0 and 1 are registered; node 2's key is not
        done = flwr_cli(tmp_path, federation.address, ca, "supernode", "register", keys[i][1], "test")
        assert done.returncode == 0, done.stdout + done.stderr
    for i in range(2):
        federation.supernode(i, 2, "--root-certificates", str(ca), "--auth-key", keys[i][0])
    intruder = federation.supernode(1, 2, "--root-certificates", str(ca), "--auth-key", keys[2][0], name="intruder")
    deployed = micro_config(
        *TWO_BY_TWO,
        "runtime=flower-deployment",
        f"flower.superlink={federation.address}",
        f"flower.root_certificates={ca}",
    )
    _, flower = run_experiment(deployed, quiet=True)
    assert flower["status"] == "completed" and flower["rounds_completed"] == 2
    # The SuperNode with an unregistered key was refused and gave up.
    assert intruder.wait(timeout=30) != 0
    assert "Exit Code: 305" in federation.log("intruder")
    # Without the CA certificate the client refuses the SuperLink's self-signed certificate.
    plain = micro_config(*TWO_BY_TWO, "runtime=flower-deployment", f"flower.superlink={federation.address}")
    with pytest.raises(FlowerConnectionError, match="could not submit the run") as refused:
        run_experiment(plain, quiet=True)
    assert "root_certificates" in str(refused.value)
