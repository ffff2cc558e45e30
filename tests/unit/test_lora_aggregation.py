"""LoRA aggregation modes: separate (A and B averaged) and product (dW = B A averaged, re-factored)."""

from __future__ import annotations

import pytest
import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.lora_aggregation import aggregate_round, check_lora_aggregation, to_product_space
from fedpeft.fl.strategies import build_strategy

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


def test_product_mode_needs_lora_pairs():
    with pytest.raises(ValueError, match="no LoRA pairs"):
        check_lora_aggregation("product", {HEAD: torch.zeros(3)})
    with pytest.raises(ValueError, match="valid: separate, product"):
        check_lora_aggregation("stack", {HEAD: torch.zeros(3)})
