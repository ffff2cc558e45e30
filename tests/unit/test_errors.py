"""Every user-facing error derives from FedpeftError, and the CLI reports any of them as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpeft.cli import app
from fedpeft.config import ConfigError, load_config
from fedpeft.data.partition import PartitionError
from fedpeft.data.sources import DataSourceError
from fedpeft.errors import FedpeftError
from fedpeft.experiment.run import RunInterrupted
from fedpeft.fl.screening import TooFewUpdatesError
from fedpeft.models.base import ModelLoadError
from fedpeft.reporting.checkpoint import CheckpointError
from fedpeft.reporting.run_dir import RunDirError
from fedpeft.runtime.flower import FlowerConnectionError, FlowerRoundError

FIXTURES = Path(__file__).parent.parent / "fixtures"


@pytest.mark.parametrize(
    ("error", "other_base"),
    [
        (ConfigError, ValueError),
        (PartitionError, ValueError),
        (DataSourceError, ValueError),
        (CheckpointError, ValueError),
        (ModelLoadError, RuntimeError),
        (FlowerRoundError, RuntimeError),
        (FlowerConnectionError, RuntimeError),
        (TooFewUpdatesError, RuntimeError),
        (RunDirError, Exception),
        (RunInterrupted, Exception),
    ],
)
def test_every_user_facing_error_derives_from_fedpeft_error(error, other_base):
    assert issubclass(error, FedpeftError) and issubclass(error, other_base)


def test_the_cli_reports_any_fedpeft_error_as_one_line(monkeypatch, tmp_path):
    import fedpeft.experiment.run as run

    class NewKindOfError(FedpeftError):
        pass

    def fail(*args, **kwargs):
        raise NewKindOfError("the offending thing; what would be valid")

    monkeypatch.setattr(run, "run_experiment", fail)
    result = CliRunner().invoke(app, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.stderr == "error: the offending thing; what would be valid\n"

    def interrupted(*args, **kwargs):
        raise RunInterrupted(tmp_path, 3)

    monkeypatch.setattr(run, "run_experiment", interrupted)
    result = CliRunner().invoke(app, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 130 and result.stderr.startswith(f"error: interrupted; {tmp_path} holds every round")


def test_a_model_name_the_file_system_refuses_is_a_model_load_error(tmp_path):
    from fedpeft.experiment.run import setup

    config = load_config(
        "default",
        [
            "model.name=" + "m" * 300,
            f"data.source={FIXTURES / 'dolly.jsonl'}",
            "data.schema=dolly",
            "data.test_size=4",
            "fl.clients=2",
        ],
    )
    with pytest.raises(ModelLoadError, match=r"model.name='m+'.*: File name too long"):
        setup(config, tmp_path)
