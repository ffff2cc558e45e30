import torch

from fedpeft.reporting.checkpoint import Checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
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
