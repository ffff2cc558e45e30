"""Code-evaluation suites inside a run (eval.suites) and through ``fedpeft evaluate`` on what a run wrote.

The micro model writes no working code, so pass@1 is 0 here; what is checked is where the suites run (round
0 and each evaluation round, once per personalised client), what is written, and that ``fedpeft evaluate``
rebuilds exactly the model the run trained (greedy completions equal the run's own last-round ones)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedpeft.cli import app
from fedpeft.config import ConfigError
from fedpeft.experiment.run import run_experiment

SUITES = ["eval.suites=[humaneval, defect-yesno]", "eval.suite_limit=3", "eval.suite_max_new_tokens=12"]


def rounds_of(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "round"]


def completions(path):
    return [json.loads(line)["completion"] for line in path.read_text().splitlines()]


def test_a_run_scores_its_suites_each_evaluation_and_evaluate_rebuilds_its_model(micro_config, tmp_path):
    run_dir, summary = run_experiment(micro_config(*SUITES), quiet=True)
    rounds = rounds_of(run_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert r["eval"]["humaneval/pass@1"] == 0.0  # the micro model writes no working code
        assert 0.0 <= r["eval"]["defect-yesno/accuracy"] <= 1.0
        samples = run_dir / "suites" / f"round-{r['round']:04d}" / "global" / "humaneval.jsonl"
        assert len(samples.read_text().splitlines()) == 3
    assert "humaneval/pass@1" in summary["final_eval"]
    assert "loss" in summary["final_eval"]  # the task's own metrics are still there

    out = tmp_path / "evaluated"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(run_dir),
            "--suites",
            "humaneval",
            "--limit",
            "3",
            "--max-new-tokens",
            "12",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    # Greedy decoding of the same trained state: the very completions the run saw in its last round.
    assert completions(out / "global" / "humaneval.jsonl") == completions(
        run_dir / "suites" / "round-0002" / "global" / "humaneval.jsonl"
    )
    assert json.loads((out / "results.json").read_text())["global"]["humaneval/pass@1"] == 0.0

    adapter_out = tmp_path / "adapter-evaluated"
    result = CliRunner().invoke(
        app,
        ["evaluate", str(run_dir / "adapter"), "--suites", "humaneval", "--limit", "3", "--max-new-tokens", "12"]
        + ["--out", str(adapter_out)],
    )
    assert result.exit_code == 0, result.output
    assert completions(adapter_out / "adapter" / "humaneval.jsonl") == completions(out / "global" / "humaneval.jsonl")


def test_a_personalised_run_scores_every_clients_model(micro_config):
    config = micro_config("fl.strategy=local", "fl.rounds=1", "eval.every=0", *SUITES)
    run_dir, _ = run_experiment(config, quiet=True)
    (last,) = [r for r in rounds_of(run_dir) if r["round"] == 1]
    assert set(last["client_test"]) == {"client-0", "client-1"}
    for label in ("client-0", "client-1"):
        assert "humaneval/pass@1" in last["client_test"][label]
        assert (run_dir / "suites" / "round-0001" / label / "defect-yesno.jsonl").is_file()


def test_suites_on_a_model_that_writes_nothing_are_refused_before_round_one(micro_config):
    config = micro_config("data.task=defect", "eval.suites=[humaneval]")
    with pytest.raises(
        ConfigError, match=r"eval.suites \['humaneval'\] score generated code, but .* sequence_classification"
    ):
        run_experiment(config, quiet=True)


def test_a_suite_limit_beyond_the_suite_is_refused_before_round_one(micro_config):
    from fedpeft.evaluation.suites import SuiteError

    with pytest.raises(SuiteError, match="eval.suite_limit=500 for suite 'humaneval', which has 164 problems"):
        run_experiment(micro_config("eval.suites=[humaneval]", "eval.suite_limit=500"), quiet=True)
