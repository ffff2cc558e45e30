"""LoRA aggregation modes: separate (A and B averaged) and product (dW = B A averaged, re-factored)."""

from __future__ import annotations

import pytest
import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.lora_aggregation import aggregate_round, check_lora_aggregation
from fedpeft.fl.strategies import build_strategy
from fedpeft.tensors.lora import to_product_space

A, B = "m.q.lora_A.default.weight", "m.q.lora_B.default.weight"
HEAD = "score.modules_to_save.default.weight"


def client(seed: int, rank: int = 2, out: int = 8, inp: int = 6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {A: torch.randn(rank, inp, generator=gen), B: torch.randn(out, rank, generator=gen), HEAD: torch.randn(3)}


def updates(states, counts):
    return [ClientUpdate(i, s, n, 1, 0.0, 0.0) for i, (s, n) in enumerate(zip(states, counts, strict=True))]


@pytest.mark.parametrize("mode", ["separate", "product"])
def test_identical_clients_give_their_own_update_in_every_mode(mode):
    same = client(1)
    out, info = aggregate_round(build_strategy("fedavg"), mode, client(0), updates([same, same, same], [1, 5, 2]), 1)
    torch.testing.assert_close(out[B] @ out[A], same[B] @ same[A])
    assert torch.equal(out[HEAD], same[HEAD])
    assert out[A].shape == same[A].shape and out[A].dtype == same[A].dtype
    if mode == "product":
        assert info["lora_residual_max"] < 1e-6


def test_product_is_the_mean_update_up_to_the_logged_truncation():
    states, counts = [client(s) for s in (1, 2, 3)], [1, 2, 5]
    out, info = aggregate_round(build_strategy("fedavg"), "product", client(0), updates(states, counts), 1)
    weights = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    mean_dw = sum(w * (s[B].double() @ s[A].double()) for w, s in zip(weights, states, strict=True))
    got = out[B].double() @ out[A].double()
    residual = float(torch.linalg.matrix_norm(mean_dw - got) / torch.linalg.matrix_norm(mean_dw))
    # Eckart-Young: the best rank-2 approximation leaves exactly the discarded singular values.
    sv = torch.linalg.svdvals(mean_dw)
    assert residual == pytest.approx(float(sv[2:].norm() / sv.norm()), rel=1e-5)
    assert info["lora_residual_max"] == pytest.approx(residual, rel=1e-4)
    # Averaging A and B separately lands further from the clients' mean update.
    sep, _ = aggregate_round(build_strategy("fedavg"), "separate", client(0), updates(states, counts), 1)
    assert torch.linalg.matrix_norm(mean_dw - sep[B].double() @ sep[A].double()) > residual * torch.linalg.matrix_norm(
        mean_dw
    )
    # A keeps orthonormal rows, so a zero product still leaves B a gradient.
    torch.testing.assert_close(out[A] @ out[A].T, torch.eye(2), atol=1e-5, rtol=0)


def test_product_space_pairs_lora_tensors_and_passes_the_rest_through():
    state = client(4)
    product = to_product_space(state)
    assert set(product) == {"m.q.lora_BA.default.weight", HEAD}
    torch.testing.assert_close(product["m.q.lora_BA.default.weight"], (state[B] @ state[A]).double())


def test_product_and_stack_modes_need_lora_pairs():
    for mode in ("product", "stack"):
        with pytest.raises(ValueError, match=f"{mode} needs LoRA adapters.*no LoRA pairs"):
            check_lora_aggregation(mode, {HEAD: torch.zeros(3)})
    with pytest.raises(ValueError, match="valid: separate, product, stack"):
        check_lora_aggregation("sum", {HEAD: torch.zeros(3)})


# ---- stack (FLoRA) and clients of different ranks ----


def test_stack_is_exactly_the_weighted_mean_of_products_at_each_clients_rank():
    from fedpeft.fl.lora_aggregation import stack_round
    from fedpeft.fl.lora_ranks import ClientRanks

    ranks = ClientRanks(global_rank=4, ranks=(1, 4, 2))
    states = [client(10 + i, rank=4) for i in range(3)]
    counts = [3, 1, 4]
    stacked, rest, info = stack_round(build_strategy("fedavg"), client(0, rank=4), updates(states, counts), 1, ranks)
    b, a = stacked[A]
    assert b.shape == (8, 1 + 4 + 2) and a.shape == (1 + 4 + 2, 6) and info["stacked_rank"] == 7
    expected = sum(
        (n / 8) * (s[B][:, :r].double() @ s[A][:r].double())
        for s, n, r in zip(states, counts, ranks.ranks, strict=True)
    )
    torch.testing.assert_close(b @ a, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rest[HEAD], sum(n * s[HEAD] for s, n in zip(states, counts, strict=True)) / 8)
    # Identical full-rank clients: the stack's product is their own product, though the rank has tripled.
    same = client(1, rank=4)
    stacked, _, _ = stack_round(build_strategy("fedprox"), client(0, rank=4), updates([same] * 3, counts), 1)
    torch.testing.assert_close(stacked[A][0] @ stacked[A][1], same[B].double() @ same[A].double())


def test_stack_refuses_strategies_that_are_not_a_weighted_mean():
    from fedpeft.fl.lora_aggregation import stack_round

    with pytest.raises(ValueError, match="stackable: fedavg, fedprox"):
        stack_round(build_strategy("fedmedian"), client(0), updates([client(1)] * 3, [1, 1, 1]), 1)


def test_a_lower_rank_client_sees_the_truncated_global_product_at_its_own_scaling():
    from fedpeft.fl.lora_ranks import ClientRanks

    ranks = ClientRanks(global_rank=4, ranks=(2,))
    g = client(3, rank=4)
    view = ranks.to_client(g, 0)
    assert torch.equal(view[A][2:], torch.zeros(2, 6)) and torch.equal(view[B][:, 2:], torch.zeros(8, 2))
    # alpha / 2 * B_c A_c == alpha / 4 * B[:, :2] A[:2]
    torch.testing.assert_close((1 / 2) * view[B] @ view[A], (1 / 4) * g[B][:, :2] @ g[A][:2])
    assert ranks.scaling_factor(0) == 2.0
    trained = {k: v + 0.5 for k, v in view.items()}
    trained[A][2:] = 0
    trained[B][:, 2:] = 0
    back = ranks.from_client(trained, g, 0)
    torch.testing.assert_close(back[B][:, :2], trained[B][:, :2] * 2)
    assert torch.equal(back[A][2:], g[A][2:]) and torch.equal(back[B][:, 2:], g[B][:, 2:])  # untrained: unchanged
    assert torch.equal(back[HEAD], trained[HEAD])
    full = sum(t.numel() * 4 for t in g.values())
    assert ranks.wire_bytes(g, 0) == full - (2 * 6 + 8 * 2) * 4
