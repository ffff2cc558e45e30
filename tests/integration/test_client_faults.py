"""Faulty clients do not end a run: a lost client or a rejected update (mis-shaped, non-finite) is dropped
and logged, the round aggregates the others when ``fl.min_clients`` remain; otherwise the run stops after
its last complete round, and ``--resume`` continues it to the uninterrupted run's adapter."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from fedpeft.experiment.run import run_experiment
from fedpeft.experiment.run import run_here as _run
from fedpeft.fl.screening import TooFewUpdatesError
from fedpeft.reporting.checkpoint import list_checkpoints, load_checkpoint
from fedpeft.testing import FAULT_ENV, apply_fault, fault_drill
from tests.integration.test_flower_runtime import TWO_BY_TWO, adapter, assert_same_run, ray_processes_after_shutdown

# Equivalence with the local runtime needs the same arithmetic on both sides (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


class FaultyRuntime:
    """The local runtime with faults injected into chosen (round, client) updates: a fault drill's kind
    (``nan``, ``shape``) corrupts the update, ``lost`` reports the client as failed. Keeps what each client
    really trained."""

    def __init__(self, local, faults: dict[tuple[int, int], str]):
        self.local, self.faults, self.trained = local, faults, {}

    def __getattr__(self, name):
        return getattr(self.local, name)

    def train_round(self, server_round, client_ids, global_state, on_client_failed=None, **kwargs):
        out = []
        for u in self.local.train_round(server_round, client_ids, global_state, **kwargs):
            self.trained[server_round, u.client_id] = u.state
            kind = self.faults.get((server_round, u.client_id))
            if kind == "lost":
                on_client_failed(u.client_id, "node lost")
                continue
            out.append(replace(u, state=apply_fault(kind, u.state)) if kind else u)
        return out


def run_with_faults(config, faults):
    holder = {}

    def wrap(local):
        holder["runtime"] = FaultyRuntime(local, faults)
        return holder["runtime"]

    run_dir, summary = _run(config, None, True, wrap)
    return run_dir, summary, holder["runtime"]


def records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_rejected_updates_are_dropped_and_the_round_aggregates_the_others(micro_config):
    config = micro_config(*TWO_BY_TWO)
    run_dir, summary, runtime = run_with_faults(config, {(1, 1): "nan", (2, 1): "shape"})
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    failures = records(run_dir, "client_failure")
    assert [(f["round"], f["client"]) for f in failures] == [(1, 1), (2, 1)]
    assert "non-finite" in failures[0]["reason"] and "has shape" in failures[1]["reason"]
    rounds = [r for r in records(run_dir, "round") if r["round"] > 0]
    assert [r["clients"] for r in rounds] == [[0], [0]]
    assert all(set(r["failed"]) == {"1"} for r in rounds)
    assert [c["client"] for c in records(run_dir, "client")] == [0, 0]  # only the aggregated send bytes
    # FedAvg of one update is that update: the global adapter is what client 0 trained in round 2
    final = load_checkpoint(list_checkpoints(run_dir)[-1]).global_state
    for name, tensor in runtime.trained[2, 0].items():
        torch.testing.assert_close(final[name], tensor)
    assert all(torch.isfinite(t).all() for t in final.values())


def test_too_few_updates_stop_the_run_and_resume_reaches_the_uninterrupted_adapter(micro_config):
    three = [*TWO_BY_TWO, "fl.rounds=3"]
    full_dir, full = run_experiment(micro_config(*three), quiet=True)
    config = micro_config(*three, "fl.min_clients=2")
    with pytest.raises(TooFewUpdatesError) as caught:
        run_with_faults(config, {(2, 1): "nan"})
    message = str(caught.value)
    assert "round 2: 1 usable client update(s), fewer than fl.min_clients=2" in message
    assert "client 1: update rejected: " in message and "non-finite" in message
    run_dir = next(p for p in (full_dir.parent).iterdir() if p != full_dir)
    assert f"fedpeft run --resume {run_dir}" in message
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["status"] == "failed" and stopped["rounds_completed"] == 1 and "fl.min_clients" in stopped["error"]
    resumed_dir, resumed = run_experiment(resume_dir=run_dir, quiet=True)
    assert resumed["status"] == "completed" and resumed["rounds_completed"] == 3
    a, b = adapter(full_dir), adapter(resumed_dir)
    for key in a:
        torch.testing.assert_close(b[key], a[key])


@pytest.mark.slow
def test_a_client_raising_in_flower_sim_is_dropped_like_a_lost_local_client(micro_config, monkeypatch):
    """The ClientApp really raises (fault drill on its Ray actor); the run equals the local run that lost
    the same client in the same round. The drill is the entry points' hook (``fedpeft run`` passes it)."""
    reference_dir, reference, _ = run_with_faults(micro_config(*TWO_BY_TWO), {(2, 1): "lost"})
    monkeypatch.setenv(FAULT_ENV, "raise:2:1")
    flower_dir, flower = run_experiment(
        micro_config(*TWO_BY_TWO, "runtime=flower-sim"), quiet=True, client_fault=fault_drill
    )
    assert_same_run(reference_dir, reference, flower_dir, flower)
    (failure,) = records(flower_dir, "client_failure")
    assert (failure["round"], failure["client"]) == (2, 1) and "fault drill" in failure["reason"]
    assert not ray_processes_after_shutdown()
