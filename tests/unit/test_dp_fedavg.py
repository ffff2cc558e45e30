"""DP-FedAvg: clipping as Flower clips, equal weights, noise of Flower's standard deviation, and an epsilon
between the exact Gaussian mechanism's and the classic RDP bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import norm

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies import ServerContext, build_strategy
from fedpeft.fl.strategies.dp_fedavg import ClipUpdate, clip_update, dp_epsilon, update_norm


def update(cid, state, n=10):
    return ClientUpdate(client_id=cid, state=state, num_examples=n, num_steps=1, train_loss=0.0, seconds=0.0)


def test_clipping_matches_flower_s_fixed_clipping():
    from flwr.supercore.differential_privacy import compute_clip_model_update

    gen = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(3, 4, generator=gen), "b": torch.randn(5, generator=gen)}
    for scale, clipping_norm in [(10.0, 1.0), (0.01, 1.0)]:
        state = {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in start.items()}
        ours, before = clip_update(state, start, clipping_norm)
        theirs = [state[k].numpy().copy() for k in ("a", "b")]
        compute_clip_model_update(theirs, [start[k].numpy() for k in ("a", "b")], clipping_norm)
        for k, t in zip(("a", "b"), theirs, strict=True):
            np.testing.assert_allclose(ours[k].numpy(), t, rtol=1e-5, atol=1e-6)
        assert before == pytest.approx(update_norm(state, start))
        assert update_norm(ours, start) == pytest.approx(min(before, clipping_norm), rel=1e-5)


def test_without_noise_the_global_step_is_the_equal_weight_mean_of_clipped_updates():
    strategy = build_strategy("dp-fedavg", {"clipping_norm": 1.0, "noise_multiplier": 0.0})
    start = {"w": torch.zeros(2)}
    updates = [update(0, {"w": torch.tensor([3.0, 4.0])}, n=10), update(1, {"w": torch.tensor([0.3, 0.4])}, n=1000)]
    new = strategy.aggregate(start, updates, 1)
    # clipped: [0.6, 0.8] and [0.3, 0.4] (already inside C); equal weights despite 10 vs 1000 examples
    torch.testing.assert_close(new["w"], torch.tensor([0.45, 0.6]))
    figures = strategy.round_figures()
    assert figures["dp_clipped_fraction"] == 0.5 and figures["dp_max_update_norm"] == pytest.approx(5.0)
    assert figures["dp_noise_std"] == 0.0 and "dp_epsilon" not in figures


def test_noise_has_flower_s_standard_deviation_and_a_seed_reproduces_it():
    from flwr.supercore.differential_privacy import compute_stdv

    settings = {"clipping_norm": 0.5, "noise_multiplier": 2.0, "noise_seed": 3}
    start = {"w": torch.zeros(400_000)}
    updates = [update(0, dict(start)), update(1, dict(start))]
    a = build_strategy("dp-fedavg", settings).aggregate(start, updates, 1)["w"]
    expected = compute_stdv(2.0, 0.5, 2)
    assert float(a.std()) == pytest.approx(expected, rel=0.01) and abs(float(a.mean())) < 0.01
    assert torch.equal(a, build_strategy("dp-fedavg", settings).aggregate(start, updates, 1)["w"])
    assert not torch.equal(a, build_strategy("dp-fedavg", settings).aggregate(start, updates, 2)["w"])
    secure = build_strategy("dp-fedavg", {**settings, "noise_seed": -1})
    assert not torch.equal(secure.aggregate(start, updates, 1)["w"], secure.aggregate(start, updates, 1)["w"])


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Epsilon of the Gaussian mechanism with sensitivity / std = mu (Balle and Wang, 2018)."""

    def delta_of(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(delta_of, 0.0, 500.0)


@pytest.mark.parametrize(("rounds", "z"), [(1, 1.0), (10, 1.0), (50, 2.0)])
def test_epsilon_with_every_client_is_between_the_exact_gaussian_and_the_classic_rdp_bound(rounds, z):
    delta = 1e-5
    reported = dp_epsilon(rounds, 1.0, z, delta)
    # T Gaussian mechanisms of noise multiplier z compose to one of multiplier z / sqrt(T)
    exact = exact_gaussian_epsilon(math.sqrt(rounds) / z, delta)
    classic = min(rounds * a / (2 * z * z) + math.log(1 / delta) / (a - 1) for a in range(2, 1025))
    assert exact <= reported <= classic


def test_epsilon_grows_with_rounds_and_shrinks_with_sampling_and_noise():
    e = dp_epsilon(100, 0.1, 1.0, 1e-5)
    assert dp_epsilon(200, 0.1, 1.0, 1e-5) > e > dp_epsilon(100, 0.05, 1.0, 1e-5)
    assert dp_epsilon(100, 0.1, 2.0, 1e-5) < e
    assert dp_epsilon(100, 0.1, 0.0, 1e-5) is None


def test_client_side_clipping_bounds_what_the_client_sends():
    start = {"w": torch.zeros(4)}
    hook = ClipUpdate(start, 0.1)
    sent = hook.finish_update({"w": torch.ones(4)})
    assert update_norm(sent, start) == pytest.approx(0.1, rel=1e-5)
    assert build_strategy("dp-fedavg", {"clipping": "client"}).client_hook(0, start) is not None
    assert build_strategy("dp-fedavg", {"clipping": "server"}).client_hook(0, start) is None


def test_bad_settings_and_combinations_are_refused():
    with pytest.raises(ValueError, match="clipping_norm=0.0 must be > 0"):
        build_strategy("dp-fedavg", {"clipping_norm": 0.0})
    with pytest.raises(ValueError, match="clipping='edge' is not one of server, client"):
        build_strategy("dp-fedavg", {"clipping": "edge"})
    strategy = build_strategy("dp-fedavg", {"clipping": "client"})
    context = ServerContext(None, None, 0, [], {}, {}, None, None, lora_aggregation="product")
    with pytest.raises(ValueError, match="use clipping=server or lora_aggregation=separate"):
        strategy.bind(context)
