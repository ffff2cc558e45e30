"""The server's view of clients that evaluate on their own rows: the example-weighted mean of their metrics,
with perplexity recomputed from the mean loss (a mean of perplexities is not the perplexity of anything)."""

import math

import pytest

from fedpeft.experiment.evaluate import weighted_metrics


def test_clients_metrics_are_weighted_by_their_examples():
    a = {"loss": 2.0, "perplexity": math.exp(2.0), "accuracy": 0.5}
    b = {"loss": 1.0, "perplexity": math.exp(1.0), "accuracy": 0.8}
    mean = weighted_metrics([(a, 30), (b, 10)])
    assert mean["loss"] == pytest.approx((2.0 * 30 + 1.0 * 10) / 40)
    assert mean["accuracy"] == pytest.approx((0.5 * 30 + 0.8 * 10) / 40)
    assert mean["perplexity"] == pytest.approx(math.exp(1.75))


def test_clients_without_rows_do_not_count_and_none_give_nothing():
    assert weighted_metrics([({"loss": 9.0}, 0), ({"loss": 1.0}, 5)]) == {"loss": 1.0}
    assert weighted_metrics([({}, 0)]) == {}
    # only the keys every client reports
    assert weighted_metrics([({"loss": 1.0, "f1": 0.5}, 1), ({"loss": 3.0}, 1)]) == {"loss": 2.0}
