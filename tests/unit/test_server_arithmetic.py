"""The server's pure functions (fedpeft.tensors.server_optim, .scaffold, .dp) and the strategy state helper,
each against a hand computation on one- or two-element tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fedpeft.fl.strategies.state import pack_state, unpack_state
from fedpeft.tensors.dp import clip_update, gaussian_noise_like, noised_mean, update_norm
from fedpeft.tensors.scaffold import drift_correction, update_control_variates, zero_variates
from fedpeft.tensors.server_optim import (
    adagrad_second_moment,
    adam_second_moment,
    adam_step_size,
    adaptive_step,
    momentum_step,
    step_toward,
    yogi_second_moment,
)


def t(*values: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# ---- server optimisers ---------------------------------------------------------------------------------


def test_second_moment_rules_by_hand():
    v, d2 = t(1.0, 4.0, 2.0), t(3.0, 2.0, 2.0)
    assert torch.equal(adam_second_moment(v, d2, 0.75), t(0.75 + 0.75, 3.0 + 0.5, 1.5 + 0.5))
    # Yogi: v - (1 - beta_2) d^2 sign(v - d^2): up toward d^2 when below, down when above, still when equal.
    assert torch.equal(yogi_second_moment(v, d2, 0.75), t(1.0 + 0.75, 4.0 - 0.5, 2.0))
    assert torch.equal(adagrad_second_moment(v, d2), t(4.0, 6.0, 4.0))


def test_adam_step_size_by_hand():
    assert adam_step_size(0.1, 0.5, 0.75, 1) == pytest.approx(0.1 * math.sqrt(0.25) / 0.5)
    assert adam_step_size(0.1, 0.5, 0.75, 2) == pytest.approx(0.1 * math.sqrt(1 - 0.5625) / 0.75)


def test_adaptive_step_starts_moments_at_zero_and_keeps_the_state_dtype():
    x = {"w": t(1.0, 2.0, dtype=torch.float32)}
    target = {"w": t(3.0, 2.0, dtype=torch.float32)}  # delta = [2, 0]
    step = adaptive_step(x, target, {}, {}, beta_1=0.5, tau=0.5, step_size=1.0, second_moment=adagrad_second_moment)
    # m = 0.5 * delta = [1, 0]; v = delta^2 = [4, 0]; x + m / (sqrt(v) + tau) = [1 + 1 / 2.5, 2]
    assert torch.equal(step.m["w"], t(1.0, 0.0)) and torch.equal(step.v["w"], t(4.0, 0.0))
    assert step.state["w"].dtype == torch.float32
    assert torch.equal(step.state["w"], t(1.4, 2.0, dtype=torch.float32))
    # A second step from the returned moments: m = 0.5 * 1 + 0.5 * delta'.
    again = adaptive_step(
        step.state, target, step.m, step.v, beta_1=0.5, tau=0.5, step_size=1.0, second_moment=adagrad_second_moment
    )
    delta = 3.0 - float(t(1.4, dtype=torch.float32))
    assert again.m["w"][0].item() == pytest.approx(0.5 + 0.5 * delta)
    assert again.v["w"][0].item() == pytest.approx(4.0 + delta * delta)


def test_momentum_step_by_hand():
    x, target = {"w": t(4.0)}, {"w": t(2.0)}  # pseudo-gradient x - target = 2
    first = momentum_step(x, target, {}, server_lr=0.5, momentum=0.5)
    assert torch.equal(first.velocity["w"], t(2.0)) and torch.equal(first.state["w"], t(3.0))
    second = momentum_step(first.state, target, first.velocity, server_lr=0.5, momentum=0.5)
    # u = 0.5 * 2 + (3 - 2) = 2; x = 3 - 0.5 * 2 = 2
    assert torch.equal(second.velocity["w"], t(2.0)) and torch.equal(second.state["w"], t(2.0))
    plain = momentum_step(x, target, {}, server_lr=1.0, momentum=0.0)
    assert plain.velocity == {} and torch.equal(plain.state["w"], t(2.0))  # FedAvg


def test_step_toward_by_hand():
    x = {"w": t(1.0, -1.0, dtype=torch.float32)}
    out = step_toward(x, {"w": t(3.0, 1.0)}, 0.5)
    assert out["w"].dtype == torch.float32 and torch.equal(out["w"], t(2.0, 0.0, dtype=torch.float32))


# ---- SCAFFOLD ------------------------------------------------------------------------------------------


def test_drift_correction_treats_missing_variates_as_zeros():
    like = {"w": torch.zeros(2, dtype=torch.float32)}
    assert torch.equal(drift_correction(like, {}, {})["w"], torch.zeros(2))
    got = drift_correction(like, {"w": t(1.0, 2.0)}, {"w": t(0.5, 4.0)})["w"]
    assert got.dtype == torch.float32 and torch.equal(got, t(0.5, -2.0, dtype=torch.float32))
    assert torch.equal(zero_variates(like)["w"], t(0.0, 0.0))


def test_control_variates_by_hand():
    x = {"w": t(1.0)}
    # Round 1, no variates; client 7 moved to 0 (x - y = 1), client 8 to 3 (x - y = -2); scales 2 and 4.
    first = update_control_variates(x, {}, {}, [(7, {"w": t(0.0)}, 2.0), (8, {"w": t(3.0)}, 4.0)], n_clients=8)
    assert torch.equal(first.clients[7]["w"], t(2.0)) and torch.equal(first.clients[8]["w"], t(-8.0))
    # c = 0 + (2 / 8) * mean(2, -8) = -0.75
    assert torch.equal(first.c["w"], t(-0.75))
    # Round 2: client 7 again from c_7 = 2 (x - y = 1 at scale 2): c_7' = 2 + 0.75 + 2 = 4.75;
    # c' = -0.75 + (1 / 8) * (4.75 - 2).
    second = update_control_variates(x, first.c, first.clients, [(7, {"w": t(0.0)}, 2.0)], n_clients=8)
    assert torch.equal(second.clients[7]["w"], t(4.75)) and list(second.clients) == [7]
    assert torch.equal(second.c["w"], t(-0.75 + 2.75 / 8))
    # More clients in the round than the run knows of: the share is capped at 1.
    capped = update_control_variates(x, {}, {}, [(0, {"w": t(0.0)}, 1.0)], n_clients=0)
    assert torch.equal(capped.c["w"], t(1.0))


# ---- DP ------------------------------------------------------------------------------------------------


def test_clip_update_by_hand():
    start = {"a": t(1.0), "b": t(0.0, 0.0)}
    state = {"a": t(4.0), "b": t(0.0, 4.0)}  # update [3, 0, 4], norm 5
    assert update_norm(state, start) == 5.0
    clipped, norm = clip_update(state, start, 2.5)
    assert norm == 5.0 and torch.equal(clipped["a"], t(2.5)) and torch.equal(clipped["b"], t(0.0, 2.0))
    same, _ = clip_update(state, start, 5.0)
    assert same == state and same is not state
    unmoved, zero = clip_update(start, start, 1.0)
    assert zero == 0.0 and all(torch.equal(unmoved[k], start[k]) for k in start)


def test_gaussian_noise_comes_from_the_generator_in_name_order():
    like = {"b": torch.zeros(2, dtype=torch.float32), "a": torch.zeros(3, dtype=torch.float32)}
    noise = gaussian_noise_like(like, 0.5, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(3, dtype=torch.float64, generator=gen) * 0.5
    b = torch.randn(2, dtype=torch.float64, generator=gen) * 0.5
    assert list(noise) == ["a", "b"] and noise["a"].dtype == torch.float32
    assert torch.equal(noise["a"], a.float()) and torch.equal(noise["b"], b.float())
    assert all(float(v.abs().max()) == 0.0 for v in gaussian_noise_like(like, 0.0, torch.Generator()).values())


def test_noised_mean_by_hand():
    start = {"w": t(1.0, 1.0, dtype=torch.float32)}
    clipped = [{"w": t(2.0, 1.0, dtype=torch.float32)}, {"w": t(1.0, -1.0, dtype=torch.float32)}]
    out = noised_mean(start, clipped, {"w": t(0.25, 0.0, dtype=torch.float32)})
    # 1 + mean([1, 0]) + 0.25 and 1 + mean([0, -2]) + 0
    assert out["w"].dtype == torch.float32 and torch.equal(out["w"], t(1.75, 0.0, dtype=torch.float32))


# ---- strategy state ------------------------------------------------------------------------------------


def test_pack_and_unpack_strategy_state_round_trip():
    m, ci = {"x.weight": t(1.0)}, {3: {"x.weight": t(2.0)}, 12: {"x.weight": t(3.0)}}
    flat = pack_state(steps=4, m=m, ci=ci)
    assert list(flat) == ["steps", "m/x.weight", "ci/3/x.weight", "ci/12/x.weight"]
    fields = unpack_state("s", flat, values={"steps": 0}, tensors=("m",), per_client=("ci",), dtype=torch.float32)
    assert fields["steps"] == 4 and fields["m"]["x.weight"].dtype == torch.float32
    assert sorted(fields["ci"]) == [3, 12] and torch.equal(fields["ci"][12]["x.weight"], t(3.0, dtype=torch.float32))
    empty = unpack_state("s", {}, values={"steps": 0}, tensors=("m",), per_client=("ci",))
    assert empty == {"steps": 0, "m": {}, "ci": {}}


def test_unpack_refuses_keys_the_strategy_does_not_keep():
    with pytest.raises(ValueError, match=r"fedavgm checkpoint state has unknown keys \['m/w', 'steps'\]"):
        unpack_state("fedavgm", {"velocity/w": t(1.0), "m/w": t(1.0), "steps": 2}, tensors=("velocity",))
    with pytest.raises(ValueError, match="unknown keys"):
        unpack_state("scaffold", {"ci/x/w": t(1.0)}, per_client=("ci",))
