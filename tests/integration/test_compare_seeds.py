"""``fedpeft compare --seeds``: every entry on every seed through the real entry point on the micro model; the
aggregates in compare.json recomputed from its per-seed rows, bad input refused before anything runs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from fedpeft.cli import app
from fedpeft.config import ConfigError
from fedpeft.experiment.compare import compare
from tests.integration.conftest import MICRO

FAST = [*MICRO, "fl.rounds=1"]
TWO_ROUNDS = [*MICRO, "fl.rounds=2", "train.lr=0.05"]  # entries that differ on the micro model


def cli_args(*args: str, overrides: list[str] = FAST) -> list[str]:
    return ["compare", "default", *args, *(x for item in overrides for x in ("--set", item))]


@pytest.mark.slow
def test_compare_over_seeds_runs_every_entry_on_every_seed_and_aggregates_the_rows(tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        app,
        cli_args(
            "--strategies",
            "fedavg,local",
            "--seeds",
            "3,5",
            "--reference",
            "local",
            "--out",
            str(out),
            "--no-isolate",
            overrides=TWO_ROUNDS,
        ),
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "fedavg-seed3",
        "fedavg-seed5",
        "local-seed3",
        "local-seed5",
    ]
    assert "[1/4] fedavg (seed 3)" in result.output and "[4/4] local (seed 5)" in result.output
    saved = json.loads((out / "compare.json").read_text())
    assert saved["seeds"] == [3, 5] and saved["reference"] == "local"
    rows = saved["rows"]
    assert [(r["strategy"], r["seed"]) for r in rows] == [("fedavg", 3), ("local", 3), ("fedavg", 5), ("local", 5)]
    for r in rows:  # each run really used its seed: the split follows it
        config = (Path(r["run_dir"]) / "config.yaml").read_text()
        assert f"seed: {r['seed']}" in config
    partitions = {r["seed"]: (Path(r["run_dir"]) / "partition.json").read_text() for r in rows}
    assert partitions[3] != partitions[5]
    final = {(r["strategy"], r["seed"]): r["final"] for r in rows}
    assert final["fedavg", 3] != final["fedavg", 5] and final["local", 3] != final["local", 5]

    by_label = {a["strategy"]: a for a in saved["aggregates"]}
    for label in ("fedavg", "local"):
        values = [final[label, 3], final[label, 5]]
        figures = by_label[label]["figures"]["final"]
        assert figures["mean"] == pytest.approx(statistics.fmean(values))
        assert figures["std"] == pytest.approx(statistics.stdev(values))
    assert by_label["local"]["difference"]["final"] is None
    difference = by_label["fedavg"]["difference"]["final"]
    interval = scipy_stats.ttest_rel(
        [final["fedavg", 3], final["fedavg", 5]], [final["local", 3], final["local", 5]]
    ).confidence_interval(0.95)
    assert difference["low"] == pytest.approx(interval.low) and difference["high"] == pytest.approx(interval.high)

    table = (out / "compare.md").read_text()
    assert table in result.output and "final token_accuracy - local (95% CI)" in table
    mean, std = by_label["fedavg"]["figures"]["final"]["mean"], by_label["fedavg"]["figures"]["final"]["std"]
    assert f"| fedavg | 2 | {mean:.4f} ± {std:.4f} |" in table
    assert f"{difference['mean']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}]" in table
    assert "| local | 2 |" in table and " | n/a | " in table
    assert (out / "compare.png").stat().st_size > 0
    print(table)


@pytest.mark.slow
def test_an_interrupted_comparison_over_seeds_keeps_the_seeds_that_finished(tmp_path):
    def stop_before_the_last(line: str) -> None:
        if line.startswith("[4/4]"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare("default", "fedavg,local", FAST, out=tmp_path / "c", quiet=True, log=stop_before_the_last, seeds="0,1")
    saved = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [(r["strategy"], r["seed"]) for r in saved["rows"]] == [("fedavg", 0), ("local", 0), ("fedavg", 1)]
    table = (tmp_path / "c" / "compare.md").read_text()
    assert "| fedavg | 2 |" in table and "| local | 1 |" in table and "± n/a" in table


def test_bad_seeds_or_reference_fail_before_anything_runs(tmp_path):
    runner = CliRunner()
    out = tmp_path / "bad"
    for args, message in [
        (("--seeds", ""), "--seeds is empty"),
        (("--seeds", "0,-1"), "'-1' is not a non-negative integer"),
        (("--seeds", "0,x"), "'x' is not a non-negative integer"),
        (("--seeds", "1,1"), "lists a seed twice"),
        (("--reference", "fedprox"), "--reference 'fedprox' is not one of the entries: fedavg, local"),
    ]:
        result = runner.invoke(app, cli_args("--strategies", "fedavg,local", "--out", str(out), *args))
        assert result.exit_code == 2 and message in result.output, result.output
    with pytest.raises(ConfigError, match="--seeds sets fl.seed"):
        compare("default", "fedavg,local:fl.seed=4", FAST, out=out, seeds=[0, 1])
    assert not out.exists()


@pytest.mark.slow
def test_one_seed_writes_the_files_of_one_run_per_entry_on_that_seed(tmp_path):
    root, (only,) = compare("default", "fedavg", FAST, out=tmp_path / "one", quiet=True, log=print, seeds="4")
    assert "seed" not in only and [p.name for p in (root / "runs").iterdir()] == ["fedavg"]
    assert "seed: 4" in (Path(only["run_dir"]) / "config.yaml").read_text()
    assert (root / "compare.md").read_text().startswith("| entry | final token_accuracy |")
    assert "aggregates" not in json.loads((root / "compare.json").read_text())
