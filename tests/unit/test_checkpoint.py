import shutil

import pytest
import torch

from fedpeft.reporting.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from fedpeft.reporting.run_dir import MetricsLog


def test_checkpoint_round_trip_and_pruning(tmp_path):
    for rnd in range(1, 5):
        state = {"a": torch.full((2, 3), float(rnd)), "b": torch.arange(4, dtype=torch.bfloat16)}
        strategy = {"momentum": torch.ones(3) * rnd, "step": rnd}
        save_checkpoint(tmp_path, Checkpoint(rnd, state, strategy, {"note": "x"}), keep=2)
    kept = list_checkpoints(tmp_path)
    assert [p.name for p in kept] == ["round-0003", "round-0004"]
    ckpt = load_checkpoint(kept[-1])
    assert ckpt.round == 4 and ckpt.extra == {"note": "x"}
    assert torch.equal(ckpt.global_state["a"], torch.full((2, 3), 4.0))
    assert ckpt.global_state["b"].dtype == torch.bfloat16
    assert ckpt.strategy_state["step"] == 4 and torch.equal(ckpt.strategy_state["momentum"], torch.ones(3) * 4)


def test_partial_checkpoint_is_ignored(tmp_path):
    save_checkpoint(tmp_path, Checkpoint(1, {"a": torch.zeros(1)}, {}, {}), keep=3)
    (tmp_path / "checkpoints" / ".round-0002.tmp").mkdir()
    (tmp_path / "checkpoints" / "round-0003").mkdir()  # no state.json: never completed
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round-0001"]


def test_metrics_log_truncates_rounds_after_checkpoint(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for rnd in range(4):
        log.append({"type": "round", "round": rnd})
    log.truncate_after(2)
    assert [r["round"] for r in log.read()] == [0, 1, 2]


def test_checkpoints_sort_by_round_number_not_name(tmp_path):
    for rnd in (9999, 10000):
        save_checkpoint(tmp_path, Checkpoint(rnd, {"a": torch.zeros(1)}, {}, {}), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round-10000"]


def test_a_torn_last_log_line_is_skipped(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.append({"type": "round", "round": 1})
    with log.path.open("a") as fh:
        fh.write('{"type": "round", "rou')
    assert log.read() == [{"type": "round", "round": 1}]
    log.truncate_after(1)
    assert log.path.read_text() == '{"type": "round", "round": 1}\n'


def _saved(tmp_path):
    save_checkpoint(tmp_path, Checkpoint(1, {"a": torch.zeros(2, 3)}, {}, {}), keep=3)
    return list_checkpoints(tmp_path)[-1]


@pytest.mark.parametrize("keep", [0, 8, 40])
def test_a_truncated_tensor_file_is_a_checkpoint_error_naming_it(tmp_path, keep):
    path = _saved(tmp_path)
    raw = (path / "global.safetensors").read_bytes()
    (path / "global.safetensors").write_bytes(raw[:keep])
    for read in (check_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"round-0001/global.safetensors cannot be read .*damaged"):
            read(path)


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (b"{not json", r"state.json cannot be read \(JSONDecodeError\)"),
        (b"\xff\xfe", r"state.json cannot be read \(UnicodeDecodeError\)"),
        (b"[]", r"state.json is not a JSON object"),
        (b'{"format": 2, "round": 1, "strategy": {}}', r"checkpoint format 2 is not 1"),
        (b'{"format": 1, "round": 3, "strategy": {}}', r"round 3 is not the directory's round 1"),
        (b'{"format": 1, "round": 1, "strategy": 5}', r"'strategy' is not a JSON object"),
    ],
)
def test_a_damaged_state_json_is_a_checkpoint_error_naming_it(tmp_path, state, problem):
    path = _saved(tmp_path)
    (path / "state.json").write_bytes(state)
    with pytest.raises(CheckpointError, match=problem):
        load_checkpoint(path)


def test_checkpoints_that_is_a_file_is_a_checkpoint_error_and_odd_names_are_ignored(tmp_path):
    _saved(tmp_path)
    odd = tmp_path / "checkpoints" / "round-latest"
    odd.mkdir()
    (odd / "state.json").write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["round-0001"]
    shutil.rmtree(tmp_path / "checkpoints")
    (tmp_path / "checkpoints").write_text("")
    with pytest.raises(CheckpointError, match=r"checkpoints is not a directory"):
        list_checkpoints(tmp_path)


def test_check_checkpoint_reads_shapes_from_headers(tmp_path):
    meta, shapes = check_checkpoint(_saved(tmp_path))
    assert meta["round"] == 1 and shapes == {"a": (2, 3)}
