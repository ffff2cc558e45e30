"""Personalised strategies, the local and centralised baselines, FedKD and `fedpeft compare` through the
real entry point on the micro model, each against a direct computation with the same seeded pieces."""

from __future__ import annotations

import json

import pytest
import torch

from fedpeft.config import ConfigError
from fedpeft.experiment import fit as run_module
from fedpeft.experiment.compare import compare, parse_entries
from fedpeft.experiment.run import RunInterrupted, run_experiment, setup
from fedpeft.reporting.checkpoint import list_checkpoints, load_checkpoint
from fedpeft.runtime.local import POOLED
from fedpeft.tensors import weighted_average

THREE = ("fl.clients=3", "fl.fraction=1.0")


def last_checkpoint(run_dir):
    return load_checkpoint(list_checkpoints(run_dir)[-1])


def rounds(run_dir):
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "round" and r["round"] > 0]


def equal_states(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_local_clients_train_alone_from_their_own_state(micro_config, tmp_path):
    config = micro_config("fl.strategy=local", *THREE)
    run_dir, summary = run_experiment(config, quiet=True)
    state = setup(config, tmp_path)
    first = {u.client_id: u.state for u in state.runtime.train_round(1, [0, 1, 2], state.global_state)}
    second = state.runtime.train_round(2, [0, 1, 2], state.global_state, client_states=first)
    saved = last_checkpoint(run_dir).client_states
    for u in second:
        assert equal_states(saved[u.client_id], u.state)
    assert summary["bytes_up"] == summary["bytes_down"] == 0
    # Each client's own model is scored on its own validation rows and on the test split.
    last = rounds(run_dir)[-1]
    assert set(last["client_eval"]) == set(last["client_test"]) == {"client-0", "client-1", "client-2"}
    mean_loss = sum(m["loss"] for m in last["client_test"].values()) / 3
    assert last["eval"]["loss"] == pytest.approx(mean_loss)


def test_naive_trust_gives_every_client_the_plain_mean_and_logs_w(micro_config, tmp_path):
    config = micro_config("fl.strategy=trust", "fl.strategy_args.weights=naive", "fl.rounds=1", *THREE)
    run_dir, _ = run_experiment(config, quiet=True)
    state = setup(config, tmp_path)
    updates = state.runtime.train_round(1, [0, 1, 2], state.global_state)
    mean = weighted_average([u.state for u in updates], [1.0, 1.0, 1.0])
    for cid, own in last_checkpoint(run_dir).client_states.items():
        torch.testing.assert_close(own, mean, rtol=0, atol=1e-7)
        assert own.keys() == mean.keys(), cid
    record = rounds(run_dir)[-1]
    assert record["mixing"] == [[pytest.approx(1 / 3)] * 3] * 3
    assert (run_dir / "mixing.png").stat().st_size > 0
    for cid in range(3):
        assert (run_dir / "adapter" / f"client-{cid}" / "adapter_config.json").exists()


def test_centralised_trains_one_model_on_the_pooled_rows_with_the_summed_budget(micro_config, tmp_path):
    config = micro_config("fl.strategy=centralised", "fl.rounds=1", *THREE)
    run_dir, summary = run_experiment(config, quiet=True)
    state = setup(config, tmp_path)
    (pooled,) = state.runtime.train_pooled(1, [0, 1, 2], state.global_state)
    assert pooled.client_id == POOLED and pooled.num_steps == 3 * 3  # three clients of train.max_steps=3
    assert pooled.num_examples == sum(len(c.train) for c in state.data.clients)
    assert equal_states(last_checkpoint(run_dir).global_state, pooled.state)
    assert summary["bytes_up"] == summary["bytes_down"] == 0


def test_fedkd_trains_its_teacher_once_and_distils_after_averaging(micro_config):
    fedavg_dir, _ = run_experiment(micro_config("fl.strategy=fedavg", "data.server_fraction=0.2"), quiet=True)
    kd_dir, _ = run_experiment(micro_config("fl.strategy=fedkd", "data.server_fraction=0.2"), quiet=True)
    kd, avg = rounds(kd_dir), rounds(fedavg_dir)
    assert "kd_teacher_train_loss" in kd[0] and "kd_teacher_train_loss" not in kd[1]
    assert all(r["kd_student_loss"] > 0 and r["kd_teacher_loss"] > 0 for r in kd)
    # Round 1's client updates are FedAvg's (same seed, same start); distillation moves the global state.
    assert kd[0]["train_loss"] == avg[0]["train_loss"]
    ckpt = last_checkpoint(kd_dir)
    assert any(k.startswith("teacher/") for k in ckpt.strategy_state)
    assert not equal_states(ckpt.global_state, last_checkpoint(fedavg_dir).global_state)


@pytest.mark.parametrize(
    ("overrides", "patched"),
    [
        (("fl.strategy=trust", "fl.strategy_args.weights=dynamic", *THREE), "aggregate_personalised_round"),
        (("fl.strategy=fedkd", "data.server_fraction=0.2"), "aggregate_round"),
    ],
)
def test_interrupted_personalised_and_fedkd_runs_resume_exactly(micro_config, monkeypatch, overrides, patched):
    config = micro_config("fl.rounds=3", *overrides)
    full_dir, _ = run_experiment(config, quiet=True)
    original = getattr(run_module, patched)

    def interrupt_in_round_2(*args, **kwargs):
        if args[-1] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, patched, interrupt_in_round_2)
    with pytest.raises(RunInterrupted) as info:
        run_experiment(config, quiet=True)
    monkeypatch.setattr(run_module, patched, original)
    run_experiment(resume_dir=info.value.run_dir, quiet=True)
    a, b = last_checkpoint(full_dir), last_checkpoint(info.value.run_dir)
    assert equal_states(a.global_state, b.global_state)
    assert a.client_states.keys() == b.client_states.keys()
    assert all(equal_states(a.client_states[c], b.client_states[c]) for c in a.client_states)
    assert all(torch.equal(v, b.strategy_state[k]) for k, v in a.strategy_state.items())


def test_server_rows_held_out_leave_the_client_split_alone_and_shared_ones_are_client_rows(micro_config, tmp_path):
    plain = setup(micro_config(), tmp_path).data
    held = setup(micro_config("data.server_fraction=0.2"), tmp_path).data
    shared = setup(micro_config("data.server_fraction=0.2", "data.server_split=shared"), tmp_path).data
    assert plain.server == [] and len(held.server) == len(shared.server) > 0

    def ids(examples):
        return {tuple(e.input_ids) for e in examples}

    for other in (held, shared):
        assert all(ids(a.train) == ids(b.train) for a, b in zip(plain.clients, other.clients, strict=True))
    client_rows = set().union(*(ids(c.train) | ids(c.val) for c in plain.clients))
    assert not ids(held.server) & client_rows
    assert ids(shared.server) <= client_rows


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["fl.strategy=fedkd"], "data.server_fraction > 0"),
        (["fl.strategy=fedkd", "data.server_fraction=0.2", "fl.lora_aggregation=product"], "lora_aggregation=separate"),
        (["fl.strategy=trust", "data.val_fraction=0"], "data.val_fraction > 0"),
        (["fl.strategy=trust", "fl.strategy_args.weights=dynamic-token"], "data.server_fraction > 0"),
        (
            ["fl.strategy=trust", "fl.strategy_args.weights=static", "data.modules=[email]", "data.test_size=4"],
            "1 category",
        ),
        (["fl.strategy=trust", "fl.strategy_args.weights=magic"], "naive, static, dynamic"),
    ],
)
def test_a_strategy_missing_what_it_needs_fails_before_any_run_directory(micro_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(micro_config(*overrides), quiet=True)
    assert not (tmp_path / "runs").exists()


def test_compare_runs_every_entry_on_the_same_split_and_writes_table_and_plot(micro_config, tmp_path):
    from tests.integration.conftest import MICRO

    out = tmp_path / "cmp"
    root, rows = compare(
        "default",
        "fedavg,fedprox:mu=0.5,local",
        [*MICRO, "fl.rounds=2", *THREE],
        out=out,
        quiet=True,
        log=lambda _: None,
    )
    assert [r["strategy"] for r in rows] == ["fedavg", "fedprox:mu=0.5", "local"]
    for r in rows:
        finals = rounds(type(out)(r["run_dir"]))
        assert r["final"] == finals[-1]["eval"]["token_accuracy"] and r["metric"] == "token_accuracy"
        partition = json.loads((type(out)(r["run_dir"]) / "partition.json").read_text())
        assert (
            partition["clients"]
            == json.loads((type(out)(rows[0]["run_dir"]) / "partition.json").read_text())["clients"]
        )
    assert rows[2]["megabytes"] == 0 and rows[0]["megabytes"] > 0
    table = (root / "compare.md").read_text()
    assert "| fedprox:mu=0.5 |" in table and (root / "compare.png").stat().st_size > 0


def test_compare_checks_every_entry_before_training_any(micro_config, tmp_path):
    from tests.integration.conftest import MICRO

    with pytest.raises(ConfigError, match="entry 'fedkd'.*server_fraction"):
        compare("default", "fedavg,fedkd", [*MICRO, f"output.dir={tmp_path / 'runs'}"], quiet=True, log=print)
    assert not (tmp_path / "runs").exists()  # not even an empty comparison directory
    with pytest.raises(ConfigError, match="not key=value"):
        parse_entries("fedprox:mu")
    with pytest.raises(ConfigError, match="twice"):
        parse_entries("fedavg,fedavg")
    # The stack check is made for every entry, not only the first of each data setting.
    with pytest.raises(ConfigError, match="entry 'fedadam'.*stackable"):
        compare(
            "default",
            "fedavg,fedadam",
            [*MICRO, "fl.lora_aggregation=stack"],
            out=tmp_path / "c2",
            quiet=True,
            log=print,
        )
    assert not list((tmp_path / "c2").rglob("metrics.jsonl"))
    with pytest.raises(ConfigError, match="name:key=value"):
        compare("default", "fedprox", [*MICRO, "fl.strategy_args.mu=0.5"], out=tmp_path / "c3", quiet=True)
    entry = parse_entries("fedkd:data.server_split=shared:alpha=0.3")[0]
    assert entry.overrides == ("data.server_split=shared", "fl.strategy_args.alpha=0.3")


def test_compare_methods_runs_each_entry_in_its_own_process(tmp_path):
    from tests.integration.conftest import MICRO

    overrides = [*MICRO, "fl.rounds=1"]
    root, rows = compare(
        "default", methods="lora,ia3", overrides=overrides, out=tmp_path / "m", quiet=True, log=print, isolate=True
    )
    lora, ia3 = rows
    assert 0 < ia3["trainable"] < lora["trainable"] and ia3["megabytes_per_round"] < lora["megabytes_per_round"]
    for row in rows:  # the peak memory in the row is the entry process's own, from its summary
        summary = json.loads((type(tmp_path)(row["run_dir"]) / "summary.json").read_text())
        assert row["peak_rss_mb"] == summary["peak_rss_mb"] > 0
    assert f"| ia3 | {ia3['final']:.4f} |" in (root / "compare.md").read_text()
    assert "peak RSS MB" in (root / "compare.md").read_text()
    # A fresh process trains exactly what this one does (same seed, same split).
    _, (again,) = compare("default", methods="ia3", overrides=overrides, out=tmp_path / "n", quiet=True, log=print)
    assert again["final"] == ia3["final"] and again["final_loss"] == ia3["final_loss"]
    with pytest.raises(ConfigError, match="either --strategies or --methods"):
        compare("default", "fedavg", overrides, methods="lora")
    entry = parse_entries("lora:r=4:use_dora=true:train.lr=0.1", "methods")[0]
    assert entry.strategy is None
    assert entry.overrides == ("peft.method=lora", "peft.r=4", "peft.use_dora=true", "train.lr=0.1")
