"""Differential privacy end to end: DP-FedAvg's clipping bounds each round's global step by C, where the
clipping happens shows in the round log, epsilon is reported, and client-side clipping on Flower's
SuperNodes gives the local run's adapter."""

from __future__ import annotations

import json

import pytest
import torch

from fedpeft.experiment.run import run_experiment
from fedpeft.fl.strategies.dp_fedavg import dp_epsilon, update_norm
from fedpeft.reporting.checkpoint import list_checkpoints, load_checkpoint
from tests.integration.test_flower_runtime import TWO_BY_TWO, adapter, assert_same_run, ray_processes_after_shutdown

C = 1e-3


# Equivalence with the local runtime needs the same arithmetic on both sides (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def round_two_step(run_dir) -> float:
    """Norm of the global adapter's change in round 2 (checkpoints of rounds 1 and 2)."""
    first, second = (load_checkpoint(p).global_state for p in list_checkpoints(run_dir))
    return update_norm(second, first)


def round_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "round" and r["round"] > 0]


@pytest.mark.parametrize("clipping", ["server", "client"])
def test_clipping_bounds_the_global_step_and_the_log_shows_where_it_happened(micro_config, clipping):
    dp = ["fl.strategy=dp-fedavg", f"fl.strategy_args.clipping_norm={C}", f"fl.strategy_args.clipping={clipping}"]
    run_dir, summary = run_experiment(micro_config(*TWO_BY_TWO, *dp, "fl.strategy_args.noise_multiplier=0"), quiet=True)
    plain_dir, _ = run_experiment(micro_config(*TWO_BY_TWO), quiet=True)
    assert round_two_step(plain_dir) > 10 * C  # unclipped, the step is far larger
    assert round_two_step(run_dir) <= C * (1 + 1e-4)
    for record in round_records(run_dir):
        if clipping == "client":  # clients clipped before sending: nothing arrives above C
            assert record["dp_clipped_fraction"] == 0.0 and record["dp_max_update_norm"] <= C * (1 + 1e-4)
        else:
            assert record["dp_clipped_fraction"] == 1.0 and record["dp_max_update_norm"] > 10 * C
    assert "dp_epsilon" not in summary  # no noise, no guarantee to report


def test_epsilon_is_reported_per_round_and_in_the_summary(micro_config):
    dp = ["fl.strategy=dp-fedavg", "fl.strategy_args.noise_multiplier=1.5", "fl.strategy_args.delta=1e-4"]
    run_dir, summary = run_experiment(micro_config(*TWO_BY_TWO, *dp), quiet=True)
    assert [r["dp_epsilon"] for r in round_records(run_dir)] == [
        pytest.approx(dp_epsilon(r, 1.0, 1.5, 1e-4)) for r in (1, 2)
    ]
    assert summary["dp_epsilon"] == pytest.approx(dp_epsilon(2, 1.0, 1.5, 1e-4)) and summary["dp_delta"] == 1e-4


@pytest.mark.slow
def test_client_side_clipping_on_flower_sim_gives_the_local_adapter(micro_config):
    dp = [
        "fl.strategy=dp-fedavg",
        f"fl.strategy_args.clipping_norm={C}",
        "fl.strategy_args.clipping=client",
        "fl.strategy_args.noise_multiplier=0.5",
        "fl.strategy_args.noise_seed=11",
    ]
    local_dir, local = run_experiment(micro_config(*TWO_BY_TWO, *dp), quiet=True)
    flower_dir, flower = run_experiment(micro_config(*TWO_BY_TWO, *dp, "runtime=flower-sim"), quiet=True)
    assert_same_run(local_dir, local, flower_dir, flower)
    assert all(r["dp_clipped_fraction"] == 0.0 for r in round_records(flower_dir))  # clipped on the SuperNodes
    assert not ray_processes_after_shutdown()


@pytest.mark.slow
def test_secagg_plus_the_server_sees_masked_vectors_and_aggregates_the_fedavg_mean(micro_config, monkeypatch):
    """SecAgg+ on flower-sim: every vector the server receives from a client is masked (spread over the
    whole 2^32 modulus, where a quantized state stays below 2^22), yet the unmasked sum gives FedAvg's
    round-1 aggregate to quantization precision (values in [-8, 8] on 2^22 levels: ~4e-6). Later rounds
    start from states that differ by that much; AdamW turns a few near-zero gradients of either sign into
    steps of about lr, so the final adapter is compared on average."""
    from flwr.server.workflow.secure_aggregation import secaggplus_workflow

    received = []
    original = secaggplus_workflow.bytes_to_ndarray

    def spy(data):
        array = original(data)
        received.append(array)
        return array

    monkeypatch.setattr(secaggplus_workflow, "bytes_to_ndarray", spy)
    local_dir, local = run_experiment(micro_config(*TWO_BY_TWO), quiet=True)
    secure = micro_config(*TWO_BY_TWO, "runtime=flower-sim", "flower.secure_aggregation=true")
    flower_dir, flower = run_experiment(secure, quiet=True)
    assert flower["status"] == "completed" and flower["rounds_completed"] == 2
    first_local, first_secure = (load_checkpoint(list_checkpoints(d)[0]).global_state for d in (local_dir, flower_dir))
    for key in first_local:
        torch.testing.assert_close(first_secure[key], first_local[key], rtol=0, atol=2e-5)
    a, b = adapter(local_dir), adapter(flower_dir)
    assert max(float((a[k] - b[k]).abs().mean()) for k in a) < 1e-4
    assert flower["final_eval"]["loss"] == pytest.approx(local["final_eval"]["loss"], rel=1e-3)
    masked = [v for v in received if v.size > 100]
    assert len(masked) >= 2 * 2  # every client's vectors in both rounds
    for v in masked:
        assert (v.astype("float64") > 2**23).mean() > 0.9
    assert not ray_processes_after_shutdown()


def test_secagg_plus_refuses_what_it_cannot_aggregate(micro_config):
    from fedpeft.config import ConfigError

    with pytest.raises(ConfigError, match="use runtime=flower-sim or flower-deployment"):
        micro_config(*TWO_BY_TWO, "flower.secure_aggregation=true")
    with pytest.raises(ConfigError, match="fl.strategy=dp-fedavg needs each client's state"):
        micro_config(*TWO_BY_TWO, "runtime=flower-sim", "flower.secure_aggregation=true", "fl.strategy=dp-fedavg")
    with pytest.raises(ConfigError, match="at least 2 clients per round"):
        micro_config(*TWO_BY_TWO, "fl.fraction=0.5", "runtime=flower-sim", "flower.secure_aggregation=true")
