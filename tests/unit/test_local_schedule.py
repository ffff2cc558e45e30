"""The client round's LR schedule and batch order."""

import math
from itertools import pairwise

import numpy as np
import pytest

from fedpeft.fl.client_round import batch_order, lr_factor, warmup_steps


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("total", [1, 2, 10, 37])
def test_warmup_ends_then_lr_decays_and_never_hits_zero(schedule, total):
    n_warm = warmup_steps(total, warmup_ratio=0.99)
    assert n_warm < total  # S0 defect: warm-up as long as training, so LR only rises
    factors = [lr_factor(s, total, n_warm, schedule) for s in range(total)]
    assert all(0 < f <= 1 for f in factors)
    peak = factors.index(max(factors))
    assert peak == n_warm
    assert all(a <= b for a, b in pairwise(factors[: peak + 1]))
    assert all(a >= b for a, b in pairwise(factors[peak:]))
    if total >= 2:
        assert factors[-1] < max(factors)  # the LR decays after its peak, in every round


def test_hand_computed_factors():
    # 10 steps, 2 warm-up: 1/3, 2/3, then cosine from 1 over 8 steps.
    assert lr_factor(0, 10, 2, "cosine") == pytest.approx(1 / 3)
    assert lr_factor(1, 10, 2, "cosine") == pytest.approx(2 / 3)
    assert lr_factor(2, 10, 2, "cosine") == pytest.approx(1.0)
    assert lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5)
    assert lr_factor(9, 10, 2, "constant") == 1.0


def test_batch_order_covers_each_example_once_per_epoch():
    batches = batch_order(10, total_steps=6, batch_size=4, rng=np.random.default_rng(0))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(batches[:3]), np.concatenate(batches[3:]))
