"""What ``--resume`` checks in a run directory before it loads a model or writes a file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from fedpeft.config import ConfigError, load_config
from fedpeft.config.recipes import dump_config
from fedpeft.experiment.resume import resume_config, state_mismatch
from fedpeft.reporting.checkpoint import Checkpoint, CheckpointError, save_checkpoint
from fedpeft.reporting.run_dir import MetricsLog, RunDirError


@pytest.fixture
def finished_run(tmp_path):
    """A run directory as a finished 2-round run leaves it, without the model-made files."""
    config = load_config("default", ["fl.rounds=2", "fl.clients=2", "fl.fraction=1.0"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(config))
    log = MetricsLog(run_dir / "metrics.jsonl")
    for rnd in (0, 1, 2):
        log.append({"type": "round", "round": rnd})
        if rnd:
            extra = {"config": config.model_dump(mode="json")}
            save_checkpoint(run_dir, Checkpoint(rnd, {"w": torch.zeros(2)}, {}, extra), keep=2)
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "rounds_completed": 2}))
    return run_dir


def test_a_finished_run_is_refused_instead_of_rewritten_but_can_be_extended(finished_run):
    with pytest.raises(ConfigError, match=r"has completed all its fl.rounds=2 rounds; nothing to resume.*fl.rounds=3"):
        resume_config(finished_run, [])
    assert resume_config(finished_run, ["fl.rounds=3"]).fl.rounds == 3


@pytest.mark.parametrize("deleted", ["checkpoints", "checkpoints/round-0002", "checkpoints/round-0002/state.json"])
def test_deleted_checkpoints_are_found_not_silently_retrained_from_an_earlier_round(finished_run, deleted):
    target = finished_run / deleted
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CheckpointError, match=r"summary.json records 2 completed round\(s\), but no checkpoint holds"):
        resume_config(finished_run, ["fl.rounds=3"])


@pytest.mark.parametrize(("key", "value"), [("data", {"task": "completion"}), ("train", {"lr": 0.5})])
def test_an_edited_config_yaml_is_refused(finished_run, key, value):
    path = finished_run / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config[key] |= value
    path.write_text(yaml.safe_dump(config))
    name = f"{key}.{next(iter(value))}"
    with pytest.raises(
        ConfigError, match=rf"config.yaml differs from the configuration .*round-0002 was written with: {name}"
    ):
        resume_config(finished_run, ["fl.rounds=3"])


def test_a_cut_or_missing_log_is_refused(finished_run):
    log = finished_run / "metrics.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(RunDirError, match=r"metrics.jsonl records rounds up to 1, but .*round-0002 holds round 2"):
        resume_config(finished_run, ["fl.rounds=3"])
    log.unlink()
    with pytest.raises(RunDirError, match=r"records rounds up to none"):
        resume_config(finished_run, ["fl.rounds=3"])


def test_a_damaged_summary_is_refused(finished_run):
    (finished_run / "summary.json").write_text("{garbage")
    with pytest.raises(RunDirError, match=r"summary.json is not a run summary"):
        resume_config(finished_run, ["fl.rounds=3"])


def test_state_mismatch_names_the_first_difference():
    model = {"a": torch.zeros(8, 4), "b": torch.zeros(3)}
    assert state_mismatch({"a": (8, 4), "b": (3,)}, model) is None
    assert state_mismatch({"a": (4, 4), "b": (3,)}, model) == "a has shape (4, 4), the model's is (8, 4)"
    assert "1 tensor(s) missing, e.g. ['b'], 1 unexpected, e.g. ['c']" in state_mismatch(
        {"a": (8, 4), "c": (3,)}, model
    )
