import numpy as np
import pytest

from fedpeft.fl.sampling import clients_per_round, sample_clients
from fedpeft.seeding import numpy_rng


@pytest.mark.parametrize(
    ("clients", "fraction", "expected"),
    [(10, 0.1, 1), (10, 0.05, 1), (10, 0.25, 3), (10, 0.5, 5), (8, 0.5, 4), (5, 0.5, 3), (1, 0.3, 1), (7, 1.0, 7)],
)
def test_clients_per_round_is_max_one_rounded(clients, fraction, expected):
    assert clients_per_round(clients, fraction) == expected


def test_sampling_is_deterministic_per_seed_and_round_and_without_replacement():
    draws = [sample_clients(20, 0.3, numpy_rng(7, "sampling", r)) for r in range(1, 30)]
    again = [sample_clients(20, 0.3, numpy_rng(7, "sampling", r)) for r in range(1, 30)]
    assert draws == again
    assert all(len(d) == 6 and len(set(d)) == 6 and d == sorted(d) for d in draws)
    assert len({tuple(d) for d in draws}) > 20  # rounds differ
    other_seed = [sample_clients(20, 0.3, numpy_rng(8, "sampling", r)) for r in range(1, 30)]
    assert other_seed != draws


def test_every_client_gets_sampled_eventually():
    seen = set()
    for r in range(200):
        seen.update(sample_clients(10, 0.2, numpy_rng(0, "sampling", r)))
    assert seen == set(range(10))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01])
def test_fraction_outside_unit_interval_is_an_error(fraction):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        sample_clients(4, fraction, np.random.default_rng(0))
