"""Statistics over seeds (``reporting.stats``) against scipy and hand computations, and the multi-seed
aggregates and table of ``fedpeft compare --seeds`` on made-up rows."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as scipy_stats

from fedpeft.config import ConfigError
from fedpeft.experiment.compare import parse_seeds
from fedpeft.reporting.compare_table import aggregate_seeds, format_seed_table
from fedpeft.reporting.plots import seed_band
from fedpeft.reporting.stats import describe, mean, paired_difference, sample_std, t_cdf, t_quantile


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29, 100, 1000])
@pytest.mark.parametrize("p", [0.01, 0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_scipy(p, df):
    assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-10, abs=1e-12)
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-12)


def test_t_quantile_closed_forms_and_bad_input():
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-12)  # Cauchy
    assert t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-12)
    for p, df in [(0.0, 3), (1.0, 3), (0.9, 0)]:
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_mean_and_sample_std_use_bessels_correction():
    values = [0.41, 0.47, 0.44, 0.52]
    assert mean(values) == pytest.approx(statistics.fmean(values))
    assert sample_std(values) == pytest.approx(statistics.stdev(values))
    assert sample_std([0.5]) is None and describe([0.5]) == {"mean": 0.5, "std": None, "min": 0.5, "max": 0.5, "n": 1}
    with pytest.raises(ValueError):
        mean([])


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_paired_difference_interval_is_scipy_ttest_rel(confidence):
    values, reference = [0.50, 0.52, 0.49, 0.55, 0.51], [0.45, 0.50, 0.47, 0.49, 0.52]
    got = paired_difference(values, reference, confidence)
    interval = scipy_stats.ttest_rel(values, reference).confidence_interval(confidence)
    assert got["low"] == pytest.approx(interval.low, abs=1e-12) and got["high"] == pytest.approx(interval.high)
    assert got["mean"] == pytest.approx(statistics.fmean(v - r for v, r in zip(values, reference, strict=True)))
    assert got["n"] == 5 and got["confidence"] == confidence


def test_paired_difference_by_hand_and_when_undefined():
    # Differences 1, 2, 3: mean 2, sample std 1, t_{0.975, 2} = 4.302652729911275 (tables).
    got = paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)
    assert (got["low"], got["high"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert paired_difference([0.3], [0.2]) is None  # one pair: no interval
    same = paired_difference([0.3, 0.4], [0.2, 0.3])  # a constant difference: a zero-width interval
    assert same["low"] == pytest.approx(0.1) == same["high"]
    with pytest.raises(ValueError):
        paired_difference([0.1, 0.2], [0.1])


def test_parse_seeds_accepts_distinct_non_negative_integers_only():
    assert parse_seeds("0, 1,2") == [0, 1, 2] and parse_seeds([3, 1]) == [3, 1] and parse_seeds("7") == [7]
    for spec, message in [
        ("", "empty"),
        ([], "empty"),
        ("0,-1", "'-1' is not a non-negative integer"),
        ("0,1.5", "'1.5' is not a non-negative integer"),
        ("0,a", "'a' is not a non-negative integer"),
        ("0,,1", "'' is not a non-negative integer"),
        ([0, True], "True"),
        ("1,2,1", "twice"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_seeds(spec)


def row(label, seed, final, best=None, loss=1.0, suites=None):
    return {
        "strategy": label,
        "seed": seed,
        "metric": "token_accuracy",
        "final": final,
        "best": final if best is None else best,
        "final_loss": loss,
        "suites": suites or {},
        "client_val": None,
        "trainable": 1234,
        "trainable_percent": 1.5,
        "megabytes_per_round": 0.5,
        "peak_rss_mb": 900.0,
        "peak_gpu_mb": None,
        "seconds": 2.0,
        "curve": [(0, 0.1), (1, final)],
    }


def test_aggregates_pair_seeds_with_the_reference_and_table_says_n_a():
    rows = [
        row("fedavg", 0, 0.40, suites={"humaneval/pass@1": 0.1}),
        row("local", 0, 0.30, suites={"humaneval/pass@1": 0.0}),
        row("fedavg", 1, 0.44, suites={"humaneval/pass@1": 0.2}),
        row("local", 1, 0.31, loss=1.2, suites={"humaneval/pass@1": 0.0}),
        row("fedavg", 2, 0.42, suites={"humaneval/pass@1": 0.3}),  # local's seed 2 was interrupted
    ]
    fedavg, local = aggregate_seeds(rows, "fedavg")
    assert fedavg["seeds"] == [0, 1, 2] and local["seeds"] == [0, 1]
    assert fedavg["figures"]["final"]["mean"] == pytest.approx(0.42)
    assert fedavg["figures"]["final"]["std"] == pytest.approx(statistics.stdev([0.40, 0.44, 0.42]))
    assert "client_val" not in fedavg["figures"] and "peak_gpu_mb" not in fedavg["figures"]
    assert fedavg["difference"] == {"final": None, "best": None, "final_loss": None}
    expected = scipy_stats.ttest_rel([0.30, 0.31], [0.40, 0.44]).confidence_interval(0.95)
    assert local["difference"]["final"]["mean"] == pytest.approx(-0.115)
    assert local["difference"]["final"]["low"] == pytest.approx(expected.low)
    assert local["difference"]["final_loss"]["n"] == 2
    table = format_seed_table([fedavg, local], "fedavg", [0, 1, 2])
    assert (
        "| entry | seeds | final token_accuracy | best token_accuracy | final token_accuracy - fedavg (95% CI) |"
        in table
    )
    assert "| fedavg | 3 | 0.4200 ± 0.0200 | 0.4200 ± 0.0200 | n/a |" in table
    assert (
        f"| local | 2 | 0.3050 ± 0.0071 | 0.3050 ± 0.0071 | -0.1150 [{expected.low:+.4f}, {expected.high:+.4f}] |"
        in table
    )
    assert "humaneval/pass@1 |" in table and "0.2000 ± 0.1000 |" in table and "ddof=1" in table
    # With local as the reference, a single finished pair gives n/a too.
    fedavg, local = aggregate_seeds(rows[:3], "local")
    assert fedavg["difference"]["final"] is None and "| fedavg | 2 |" in format_seed_table(
        [fedavg, local], "local", [0, 1]
    )
    assert "| local | 1 | 0.3000 ± n/a |" in format_seed_table([fedavg, local], "local", [0, 1])


def test_seed_band_is_mean_min_max_over_the_rounds_every_seed_has():
    rounds, centre, low, high = seed_band([[(0, 0.1), (1, 0.3), (2, 0.5)], [(0, 0.1), (1, 0.5)]])
    assert rounds == [0, 1] and centre == pytest.approx([0.1, 0.4]) and low == [0.1, 0.3] and high == [0.1, 0.5]
