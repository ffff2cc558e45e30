"""Experiment trackers (``output.loggers``): the scalars of metrics.jsonl, sent on to TensorBoard, Weights &
Biases or MLflow through each library's own API.

metrics.jsonl stays the truth (DESIGN: "the run directory is the truth"); a tracker is a copy for people who
watch runs in those tools. :class:`~fedpeft.reporting.run_dir.MetricsLog` writes each record to the file
first and then hands it to a :class:`TrackerSet`, which sends every numeric field to every tracker with the
record's round as the step (:func:`record_scalars` names them). Notable choices:

- Each tracker is a class registered by name in :data:`TRACKERS`; its library is imported only when a run
  opens it, and :func:`check_installed` finds a missing one before anything is loaded or written.
- A tracker that fails while the run goes on costs a :class:`TrackerWarning` and is dropped for the rest of
  the run; the file and the other trackers go on. One that cannot start is a :class:`TrackerError` before
  round 1 (fail early), as is a tracker asked for whose package is missing.
- The configuration goes to each tracker once, when the run starts: TensorBoard as a text summary,
  wandb as the run's config, MLflow as parameters (dotted keys; values over MLflow's 6,000-character limit
  are cut; config.yaml holds them whole). A resumed run does not send it again.
- Resuming continues each tracker's own run: TensorBoard writes into the same directory with
  ``purge_step`` (points of the interrupted round are hidden), wandb and MLflow reopen the run whose id
  ``trackers.json`` in the run directory keeps. MLflow's history is append-only, so an interrupted round's
  points stay there beside the resumed round's.
- wandb runs offline unless ``WANDB_MODE`` says otherwise (a run never uploads by surprise), with its
  system statistics and console capture off. MLflow uses ``MLFLOW_TRACKING_URI``, else a SQLite store in
  ``RUN_DIR/mlruns`` (MLflow 3 refuses its old file store by default; SQLAlchemy comes with Flower).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpeft.errors import FedpeftError
from fedpeft.paths import atomic_write_text
from fedpeft.registry import Registry

INSTALL_HINT = "pip install 'fedpeft[trackers]'"
IDS_FILE = "trackers.json"
"""In the run directory: the id of each tracker's run (wandb, MLflow), so a resumed run continues it."""
STATUSES = ("completed", "interrupted", "failed")


class TrackerError(FedpeftError):
    """A tracker named in ``output.loggers`` that is not installed or cannot start."""


class TrackerWarning(UserWarning):
    """A tracker failed during the run; it is dropped, and metrics.jsonl still has every record."""


class Tracker:
    """One tracker's run. Opened once per process run with the run directory, the resolved config (a
    JSON-like mapping) and, when resuming, the last completed round; ``log_scalars`` takes one record's
    scalars; ``close`` ends the tracker's run with the run's status (one of :data:`STATUSES`)."""

    name: str
    package: str
    """The module that must import for this tracker to work."""

    def __init__(self, run_dir: Path, config: Mapping[str, Any], resume_after: int | None):
        raise NotImplementedError

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        raise NotImplementedError


TRACKERS: Registry[type[Tracker]] = Registry("tracker", "output.loggers")


def check_names(names: Sequence[str]) -> None:
    """``output.loggers`` names registered trackers, each once; a ValueError lists the valid names."""
    for name in names:
        TRACKERS.get(name)
    if len(set(names)) != len(names):
        raise ValueError(f"output.loggers names a tracker twice: {list(names)}")


def check_installed(names: Sequence[str]) -> None:
    """Each named tracker's package can be imported; else a :class:`TrackerError` naming the extra."""
    missing = [TRACKERS.get(n).package for n in names if importlib.util.find_spec(TRACKERS.get(n).package) is None]
    if missing:
        raise TrackerError(
            f"output.loggers={list(names)} needs {', '.join(missing)}, which is not installed; "
            f"install the trackers with: {INSTALL_HINT} (or remove them from output.loggers)"
        )


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """Every numeric field of a metrics record, by a ``/``-joined path: a round's own fields keep their
    names (``train_loss``, ``eval/loss``, ``client_eval/client-3/loss``, ``mixing/0/1``); other records are
    put under their type and client (``client/3/train_loss``). The round (the step), the type, the client
    and the list of clients are ids, not scalars; booleans and text are left out."""
    kind = record.get("type", "round")
    prefix = "" if kind == "round" else f"{kind}/" + (f"{record['client']}/" if "client" in record else "")
    fields = {k: v for k, v in record.items() if k not in ("type", "round", "client", "clients")}
    return {prefix + key: value for key, value in _numeric_leaves(fields, "")}


def _numeric_leaves(value: Any, path: str) -> Iterable[tuple[str, float]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _numeric_leaves(item, f"{path}/{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _numeric_leaves(item, f"{path}/{i}" if path else str(i))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, float(value)


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The config as dotted keys and text values (``fl.rounds`` -> ``"5"``); lists and empty mappings are
    one value, written as JSON."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flat_config(value, f"{name}.")
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def read_ids(run_dir: Path) -> dict[str, Any]:
    """What ``trackers.json`` holds (each tracker's run id); empty for a run that has none."""
    path = run_dir / IDS_FILE
    if not path.exists():
        return {}
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise TrackerError(f"{path} cannot be read ({err}); it holds the trackers' run ids") from None
    if not isinstance(ids, dict):
        raise TrackerError(f"{path} is not a JSON object of the trackers' run ids")
    return ids


def _store_id(run_dir: Path, name: str, value: dict[str, Any]) -> None:
    atomic_write_text(run_dir / IDS_FILE, json.dumps(read_ids(run_dir) | {name: value}, indent=2) + "\n")


class TrackerSet:
    """The run's open trackers: each metrics record goes to all of them; one that fails is dropped with a
    :class:`TrackerWarning`. Empty (no ``output.loggers``), it does nothing."""

    def __init__(self, trackers: Sequence[Tracker] = ()):
        self.trackers = list(trackers)

    def log_record(self, record: Mapping[str, Any]) -> None:
        if not self.trackers:
            return
        step, scalars = int(record.get("round", 0)), record_scalars(record)
        if not scalars:
            return
        for tracker in list(self.trackers):
            try:
                tracker.log_scalars(step, scalars)
            except Exception as err:  # a tracker's trouble must never stop the run nor its metrics.jsonl
                self.trackers.remove(tracker)
                warnings.warn(
                    f"tracker {tracker.name} failed at round {step} ({type(err).__name__}: {err}); it gets nothing "
                    "more this run, and metrics.jsonl still has every record",
                    TrackerWarning,
                    stacklevel=2,
                )
                _close_quietly(tracker, "failed")

    def close(self, status: str) -> None:
        """End every tracker's run with the run's ``status`` (completed, interrupted or failed)."""
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            try:
                tracker.close(status)
            except Exception as err:
                warnings.warn(f"tracker {tracker.name} failed to close: {err}", TrackerWarning, stacklevel=2)


def _close_quietly(tracker: Tracker, status: str) -> None:
    try:
        tracker.close(status)
    except Exception:  # already reported as failed; closing is best effort
        pass


def open_trackers(
    names: Sequence[str], run_dir: Path, config: Mapping[str, Any], resume_after: int | None = None
) -> TrackerSet:
    """Start each named tracker for the run in ``run_dir``; ``resume_after``: the last completed round of a
    resumed run (None: a new run). One that cannot start closes those already started and raises a
    :class:`TrackerError` naming it."""
    check_installed(names)
    opened: list[Tracker] = []
    for name in names:
        try:
            opened.append(TRACKERS.get(name)(run_dir, config, resume_after))
        except TrackerError:
            TrackerSet(opened).close("failed")
            raise
        except Exception as err:
            TrackerSet(opened).close("failed")
            raise TrackerError(f"output.loggers: {name} could not start: {type(err).__name__}: {err}") from err
    return TrackerSet(opened)


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """TensorBoard event files in RUN_DIR/tensorboard (torch.utils.tensorboard.SummaryWriter)."""

    package = "tensorboard"

    def __init__(self, run_dir: Path, config: Mapping[str, Any], resume_after: int | None):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_after is None else resume_after + 1
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)
        if resume_after is None:
            text = json.dumps(dict(config), indent=2)
            self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()), global_step=0)
            self.writer.flush()

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    """A Weights & Biases run (project "fedpeft", named after the run directory), offline unless WANDB_MODE
    says otherwise; its files go under RUN_DIR/wandb."""

    package = "wandb"
    EXIT_CODES = {"completed": 0, "interrupted": 130, "failed": 1}

    def __init__(self, run_dir: Path, config: Mapping[str, Any], resume_after: int | None):
        import wandb

        stored = read_ids(run_dir).get(self.name, {}).get("id") if resume_after is not None else None
        self.run = wandb.init(
            mode=os.environ.get("WANDB_MODE", "offline"),
            dir=str(run_dir),
            project=os.environ.get("WANDB_PROJECT", "fedpeft"),
            name=run_dir.name,
            config=dict(config) if resume_after is None else None,
            id=stored,
            resume="allow" if stored else None,
            settings=wandb.Settings(x_disable_stats=True, console="off"),
        )
        _store_id(run_dir, self.name, {"id": self.run.id})

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self, status: str) -> None:
        self.run.finish(exit_code=self.EXIT_CODES.get(status, 1))


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    """An MLflow run (experiment "fedpeft", named after the run directory) at MLFLOW_TRACKING_URI, else in a
    SQLite store in RUN_DIR/mlruns; the flattened config as its parameters."""

    package = "mlflow"
    STATUSES = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}

    def __init__(self, run_dir: Path, config: Mapping[str, Any], resume_after: int | None):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables..."
        local = run_dir.resolve() / "mlruns"
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{local / 'mlflow.db'}"
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri)
        stored = read_ids(run_dir).get(self.name, {}) if resume_after is not None else {}
        if stored.get("run_id"):
            self.run_id = stored["run_id"]
            try:
                self.client.update_run(self.run_id, status="RUNNING")
            except Exception as err:
                raise TrackerError(
                    f"output.loggers: mlflow cannot reopen run {self.run_id} (from {run_dir / IDS_FILE}) at {uri}: "
                    f"{err}; it was created at {stored.get('tracking_uri')!r}: set MLFLOW_TRACKING_URI to that store"
                ) from None
        else:
            experiment = self.client.get_experiment_by_name("fedpeft")
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else self.client.create_experiment("fedpeft", artifact_location=(local / "artifacts").as_uri())
            )
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            _store_id(run_dir, self.name, {"run_id": self.run_id, "tracking_uri": uri})
            params = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in flat_config(config).items()]
            for at in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.run_id, params=params[at : at + MAX_PARAMS_TAGS_PER_BATCH])

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in scalars.items()]
        for at in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[at : at + MAX_METRICS_PER_BATCH])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, self.STATUSES.get(status, "FAILED"))
