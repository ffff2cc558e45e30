"""A real run with ``output.loggers: [tensorboard, wandb, mlflow]``, then resumed for one more round: each
tracker, read back with its own library, holds exactly the scalars of metrics.jsonl at their rounds. And a
tracker that breaks mid-run costs a warning, not the run nor its metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from fedpeft.experiment.run import run_experiment
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting import trackers as tr
from tests.unit.test_trackers import (
    assert_same_scalars,
    expected_scalars,
    offline_trackers,  # noqa: F401 (a fixture)
    read_mlflow,
    read_tensorboard,
    read_wandb,
    tensorboard_text,
)


@pytest.mark.slow
def test_every_tracker_gets_the_scalars_of_metrics_jsonl_and_a_resume_continues_them(
    micro_config,
    offline_trackers,  # noqa: F811
    monkeypatch,
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the store in the run directory
    config = micro_config("fl.rounds=1", "output.loggers=[tensorboard,wandb,mlflow]")
    run_dir, _ = run_experiment(config, quiet=True)
    _, summary = run_experiment(resume_dir=run_dir, overrides=["fl.rounds=2"], quiet=True)
    assert summary["status"] == "completed"

    records = rd.MetricsLog(run_dir / rd.METRICS_FILE).read()
    want = expected_scalars(records)
    assert sorted(want) == [0, 1, 2]
    last_round = next(r for r in reversed(records) if r["type"] == "round")
    assert want[2]["eval/loss"] == last_round["eval"]["loss"] and want[2]["bytes_up"] == last_round["bytes_up"]
    assert "client/0/train_loss" in want[1] and "client_eval/client-1/loss" in want[0]

    assert_same_scalars(read_tensorboard(run_dir / "tensorboard"), want, rel=1e-6)  # float32 events
    ids, history, configs = read_wandb(run_dir)
    assert_same_scalars(history, want, rel=1e-12)
    stored = tr.read_ids(run_dir)
    assert ids == {stored["wandb"]["id"]}
    scalars, params, status = read_mlflow(stored["mlflow"]["tracking_uri"], stored["mlflow"]["run_id"])
    assert_same_scalars(scalars, want, rel=1e-12)
    assert status == "FINISHED"

    # The config went to each tracker once, as the first run resolved it.
    written = config.model_dump(mode="json")
    assert [json.loads(t) for t in tensorboard_text(run_dir / "tensorboard", "config")] == [written]
    assert configs == [written, {}]
    assert params["fl.rounds"] == "1" and params["model.name"] == "builtin:micro"
    assert params == tr.flat_config(written)


def test_a_tracker_failing_mid_run_leaves_the_run_and_its_metrics_whole(micro_config, monkeypatch):
    real_log = tr.TensorBoardTracker.log_scalars

    def fail_in_round_two(self, step, scalars):
        if step == 2:
            raise OSError("disk quota exceeded")
        real_log(self, step, scalars)

    monkeypatch.setattr(tr.TensorBoardTracker, "log_scalars", fail_in_round_two)
    with pytest.warns(tr.TrackerWarning, match="tracker tensorboard failed at round 2"):
        run_dir, summary = run_experiment(micro_config("output.loggers=[tensorboard]"), quiet=True)
    assert summary["status"] == "completed"
    records = rd.MetricsLog(run_dir / rd.METRICS_FILE).read()
    assert sorted({r["round"] for r in records}) == [0, 1, 2]
    want = expected_scalars(records)
    assert_same_scalars(read_tensorboard(run_dir / "tensorboard"), {s: want[s] for s in (0, 1)}, rel=1e-6)
