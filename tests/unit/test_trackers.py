"""The experiment trackers (``output.loggers``): which scalars a record gives, how names are checked, what a
missing package or a failing tracker does, and that each real library gets, and on resume continues, its run.

Each tracker is read back with its own library's reader: TensorBoard's EventAccumulator, wandb's offline
``.wandb`` file (LevelDB log framing around wandb's protobuf records) and MLflow's ``MlflowClient``. The
readers are shared with the integration test. Nothing here reaches the network: wandb is offline, MLflow
writes to a SQLite file, and both libraries' telemetry is off.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from fedpeft.config import ConfigError, load_config
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting import trackers as tr

OFFLINE_ENV = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_ERROR_REPORTING": "false",
    "WANDB_DISABLE_GIT": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


@pytest.fixture
def offline_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """wandb offline with its own directories under tmp_path, MLflow on a SQLite file there, no telemetry."""
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    home = tmp_path / "tracker-home"
    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(home / key.lower()))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    return tmp_path


# ---- readers, one per library ----


def read_tensorboard(log_dir: Path) -> dict[int, dict[str, float]]:
    """step -> {tag: value}, as TensorBoard shows it (purged points left out); a tag logged twice at a step
    fails the test."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    out: dict[int, dict[str, float]] = {}
    for tag in acc.Tags()["scalars"]:
        for event in acc.Scalars(tag):
            assert tag not in out.get(event.step, {}), f"{tag} twice at step {event.step}"
            out.setdefault(event.step, {})[tag] = event.value
    return out


def tensorboard_text(log_dir: Path, tag: str) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    if f"{tag}/text_summary" not in acc.Tags()["tensors"]:
        return []
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{tag}/text_summary")]


def wandb_records(path: Path) -> list:
    """The protobuf records of an offline run's ``.wandb`` file: a 7-byte header (":W&B", magic, version),
    then LevelDB log framing (32 KiB blocks; each chunk: CRC32C, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def read_wandb(run_dir: Path) -> tuple[set[str], dict[int, dict[str, float]], list[dict]]:
    """Every offline wandb run under ``run_dir/wandb`` in the order they ran: (their run ids, step ->
    {key: value} with a later run's value winning, the config each run sent)."""
    ids, history, configs = set(), {}, []
    for run_file in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
                configs.append({u.key: json.loads(u.value_json) for u in record.run.config.update if u.key != "_wandb"})
            elif kind == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                step = items.pop("_step")
                history.setdefault(step, {}).update({k: v for k, v in items.items() if not k.startswith("_")})
    return ids, history, configs


def read_mlflow(uri: str, run_id: str) -> tuple[dict[int, dict[str, float]], dict[str, str], str]:
    """MLflow's (step -> {key: value}, with the latest value logged at a step winning; params; status)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    out: dict[int, dict[str, float]] = {}
    for key in run.data.metrics:
        for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            out.setdefault(metric.step, {})[key] = metric.value
    return out, run.data.params, run.info.status


def expected_scalars(records: list[dict]) -> dict[int, dict[str, float]]:
    """step -> {name: value} from metrics records, written independently of ``record_scalars``: each numeric
    leaf of a round record under its path, of another record under ``type/client/``."""
    out: dict[int, dict[str, float]] = {}
    for record in records:
        head = "" if record["type"] == "round" else f"{record['type']}/{record['client']}/"
        stack = [(head + k, v) for k, v in record.items() if k not in ("type", "round", "client", "clients")]
        while stack:
            name, value = stack.pop()
            if isinstance(value, dict):
                stack += [(f"{name}/{k}", v) for k, v in value.items()]
            elif isinstance(value, list):
                stack += [(f"{name}/{i}", v) for i, v in enumerate(value)]
            elif type(value) in (int, float):
                out.setdefault(record["round"], {})[name] = float(value)
    return out


def assert_same_scalars(got: dict[int, dict[str, float]], want: dict[int, dict[str, float]], rel: float) -> None:
    assert sorted(got) == sorted(want)
    for step in want:
        assert set(got[step]) == set(want[step]), f"step {step}"
        for name, value in want[step].items():
            assert got[step][name] == pytest.approx(value, rel=rel, abs=1e-12), f"{name} at step {step}"


# ---- which scalars a record gives ----


def test_round_record_scalars_keep_their_paths_and_drop_ids_text_and_flags():
    record = {
        "type": "round",
        "round": 3,
        "clients": [0, 2],
        "failed": {"1": "update rejected: not finite"},
        "examples": 40,
        "train_loss": 1.5,
        "eval": {"loss": 2.0, "token_accuracy": 0.25},
        "client_eval": {"client-0": {"loss": 2.5}},
        "client_test": {},
        "bytes_up": 1024,
        "mixing": [[0.75, 0.25], [0.5, 0.5]],
        "screened": True,
    }
    assert tr.record_scalars(record) == {
        "examples": 40.0,
        "train_loss": 1.5,
        "eval/loss": 2.0,
        "eval/token_accuracy": 0.25,
        "client_eval/client-0/loss": 2.5,
        "bytes_up": 1024.0,
        "mixing/0/0": 0.75,
        "mixing/0/1": 0.25,
        "mixing/1/0": 0.5,
        "mixing/1/1": 0.5,
    }


def test_other_records_go_under_their_type_and_client():
    client = {"type": "client", "round": 2, "client": 5, "examples": 8, "train_loss": 0.5, "seconds": 0.25}
    assert tr.record_scalars(client) == {"client/5/examples": 8.0, "client/5/train_loss": 0.5, "client/5/seconds": 0.25}
    failure = {"type": "client_failure", "round": 2, "client": 1, "reason": "lost"}
    assert tr.record_scalars(failure) == {}


def test_flat_config_dots_keys_and_writes_lists_as_json():
    flat = tr.flat_config(
        {"fl": {"rounds": 5, "strategy": "fedavg", "strategy_args": {}}, "peft": {"target": ["q", "v"]}}
    )
    assert flat == {"fl.rounds": "5", "fl.strategy": "fedavg", "fl.strategy_args": "{}", "peft.target": '["q", "v"]'}


# ---- names and packages ----


def test_output_loggers_default_empty_and_checked_against_the_registry(tmp_path):
    assert load_config("default", [f"output.dir={tmp_path}"]).output.loggers == []
    assert load_config("default", ["output.loggers=[wandb,mlflow]"]).output.loggers == ["wandb", "mlflow"]
    with pytest.raises(ConfigError, match=r"output.loggers 'neptune'; valid: mlflow, tensorboard, wandb"):
        load_config("default", ["output.loggers=[tensorboard,neptune]"])
    with pytest.raises(ConfigError, match="names a tracker twice"):
        load_config("default", ["output.loggers=[wandb,wandb]"])


def test_missing_package_is_reported_with_the_extra_before_anything_is_written(tmp_path, monkeypatch):
    from fedpeft.experiment.run import run_experiment

    real_find_spec = tr.importlib.util.find_spec
    monkeypatch.setattr(tr.importlib.util, "find_spec", lambda n: None if n == "wandb" else real_find_spec(n))
    config = load_config("default", [f"output.dir={tmp_path / 'runs'}", "output.loggers=[tensorboard,wandb]"])
    with pytest.raises(tr.TrackerError) as err:
        run_experiment(config, quiet=True)
    assert "wandb" in str(err.value) and "pip install 'fedpeft[trackers]'" in str(err.value)
    assert "tensorboard," not in str(err.value).split("needs")[1]  # only the missing one is named as needed
    assert not (tmp_path / "runs").exists()


def test_a_tracker_that_cannot_start_is_an_error_naming_it(offline_trackers, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "no-such-scheme://store")
    with pytest.raises(tr.TrackerError, match="output.loggers: mlflow could not start"):
        tr.open_trackers(["tensorboard", "mlflow"], offline_trackers, {"fl": {"rounds": 1}})


# ---- a failing tracker ----


class Recording(tr.Tracker):
    def __init__(self, name: str, fail_at: int | None = None):
        self.name, self.fail_at, self.logged, self.closed = name, fail_at, [], None

    def log_scalars(self, step, scalars):
        if step == self.fail_at:
            raise ConnectionError("server went away")
        self.logged.append((step, dict(scalars)))

    def close(self, status):
        self.closed = status


def test_a_tracker_failing_mid_run_is_dropped_and_the_log_and_other_trackers_go_on(tmp_path):
    failing, healthy = Recording("flaky", fail_at=2), Recording("steady")
    trackers = tr.TrackerSet([failing, healthy])
    log = rd.MetricsLog(tmp_path / rd.METRICS_FILE, trackers)
    records = [{"type": "round", "round": r, "train_loss": 1.0 / r} for r in (1, 2, 3)]
    log.append(records[0])
    with pytest.warns(tr.TrackerWarning, match="tracker flaky failed at round 2.*ConnectionError"):
        log.append(records[1])
    log.append(records[2])
    assert log.read() == records
    assert [step for step, _ in failing.logged] == [1] and failing.closed == "failed"
    assert healthy.logged == [(r["round"], {"train_loss": r["train_loss"]}) for r in records]
    trackers.close("completed")
    assert healthy.closed == "completed"


# ---- each library: a run, its config once, and a resumed run continuing it ----


CONFIG = {"recipe": "default", "fl": {"rounds": 3, "strategy": "fedavg"}, "peft": {"target_modules": ["q", "v"]}}


def first_and_resumed(name: str, run_dir: Path) -> None:
    """Rounds 0-2 logged, then interrupted (round 2 not checkpointed), then resumed after round 1: round 2
    is logged again with other values, and round 3."""
    first = tr.open_trackers([name], run_dir, CONFIG)
    for step in (0, 1, 2):
        first.log_record({"type": "round", "round": step, "train_loss": 10.0 + step, "eval": {"loss": 20.0 + step}})
    first.close("interrupted")
    resumed = tr.open_trackers([name], run_dir, CONFIG, resume_after=1)
    for step in (2, 3):
        resumed.log_record({"type": "round", "round": step, "train_loss": 30.0 + step, "eval": {"loss": 40.0 + step}})
    resumed.close("completed")


RESUMED = {
    step: {"train_loss": loss, "eval/loss": ev}
    for step, loss, ev in [(0, 10, 20), (1, 11, 21), (2, 32, 42), (3, 33, 43)]
}


def test_tensorboard_resumes_in_the_same_directory_purging_the_interrupted_round(offline_trackers):
    run_dir = offline_trackers / "run"
    run_dir.mkdir()
    first_and_resumed("tensorboard", run_dir)
    assert_same_scalars(read_tensorboard(run_dir / "tensorboard"), RESUMED, rel=1e-6)
    (config_text,) = tensorboard_text(run_dir / "tensorboard", "config")
    assert json.loads(config_text) == CONFIG


def test_wandb_resumes_the_run_whose_id_the_run_directory_keeps(offline_trackers):
    run_dir = offline_trackers / "run"
    run_dir.mkdir()
    first_and_resumed("wandb", run_dir)
    ids, history, configs = read_wandb(run_dir)
    assert ids == {tr.read_ids(run_dir)["wandb"]["id"]}
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2
    assert_same_scalars(history, RESUMED, rel=1e-9)
    assert configs == [CONFIG, {}]  # the config went once, with the first run


def test_wandb_respects_wandb_mode(offline_trackers, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = offline_trackers / "run"
    run_dir.mkdir()
    trackers = tr.open_trackers(["wandb"], run_dir, CONFIG)
    trackers.log_record({"type": "round", "round": 0, "train_loss": 1.0})
    trackers.close("completed")
    assert not list(run_dir.glob("wandb/offline-run-*"))


def test_mlflow_resumes_the_run_whose_id_the_run_directory_keeps(offline_trackers):
    run_dir = offline_trackers / "run"
    run_dir.mkdir()
    first_and_resumed("mlflow", run_dir)
    stored = tr.read_ids(run_dir)["mlflow"]
    scalars, params, status = read_mlflow(stored["tracking_uri"], stored["run_id"])
    assert_same_scalars(scalars, RESUMED, rel=1e-9)
    assert params == {
        "recipe": "default",
        "fl.rounds": "3",
        "fl.strategy": "fedavg",
        "peft.target_modules": '["q", "v"]',
    }
    assert status == "FINISHED"


def test_mlflow_without_a_tracking_uri_keeps_its_store_in_the_run_directory(offline_trackers, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    run_dir = offline_trackers / "run"
    run_dir.mkdir()
    trackers = tr.open_trackers(["mlflow"], run_dir, CONFIG)
    trackers.log_record({"type": "round", "round": 1, "train_loss": 0.5})
    trackers.close("failed")
    stored = tr.read_ids(run_dir)["mlflow"]
    assert (run_dir / "mlruns" / "mlflow.db").is_file()
    scalars, _, status = read_mlflow(stored["tracking_uri"], stored["run_id"])
    assert scalars == {1: {"train_loss": 0.5}} and status == "FAILED"
