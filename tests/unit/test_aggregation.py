"""FedAvg arithmetic against a hand computation and against Flower's own weighted average."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import aggregate as flower_weighted_average

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies import STRATEGIES, build_strategy, register_strategy
from fedpeft.fl.strategies.base import Strategy
from fedpeft.tensors import payload_bytes, weighted_average


def update(cid: int, state: dict[str, torch.Tensor], n: int) -> ClientUpdate:
    return ClientUpdate(client_id=cid, state=state, num_examples=n, num_steps=1, train_loss=0.0, seconds=0.0)


def test_fedavg_weights_by_example_count_hand_computed():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    b = {"w": torch.tensor([4.0, 8.0]), "b": torch.tensor([[4.0]])}
    out = build_strategy("fedavg").aggregate(a, [update(0, a, 1), update(1, b, 3)], server_round=1)
    # (1*[1,2] + 3*[4,8]) / 4 and (1*0 + 3*4) / 4
    assert torch.equal(out["w"], torch.tensor([3.25, 6.5]))
    assert torch.equal(out["b"], torch.tensor([[3.0]]))


def test_fedavg_matches_flower_aggregate_on_random_states():
    gen = torch.Generator().manual_seed(3)
    shapes = {"lora_A": (4, 16), "lora_B": (16, 4), "head": (7,)}
    states = [{k: torch.randn(s, generator=gen) for k, s in shapes.items()} for _ in range(5)]
    counts = [3, 17, 1, 40, 9]
    ours = build_strategy("fedavg").aggregate(
        states[0], [update(i, s, n) for i, (s, n) in enumerate(zip(states, counts, strict=True))], 1
    )
    keys = list(shapes)
    theirs = flower_weighted_average([([s[k].numpy() for k in keys], n) for s, n in zip(states, counts, strict=True)])
    for k, ref in zip(keys, theirs, strict=True):
        np.testing.assert_allclose(ours[k].numpy(), ref, rtol=1e-6, atol=1e-7)


def test_weighted_average_keeps_dtype_and_rejects_bad_input():
    s = {"x": torch.ones(2, dtype=torch.bfloat16)}
    assert weighted_average([s, s], [1, 1])["x"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="positive sum"):
        weighted_average([s], [0])
    with pytest.raises(KeyError, match="different keys"):
        weighted_average([s, {"y": torch.ones(2)}], [1, 1])
    with pytest.raises(ValueError, match="shape mismatch"):
        weighted_average([{"x": torch.ones(2)}, {"x": torch.ones(3)}], [1, 1])
    with pytest.raises(ValueError, match="no client updates"):
        build_strategy("fedavg").aggregate(s, [], 4)


def test_payload_bytes_counts_each_dtype():
    assert payload_bytes({"a": torch.zeros(10), "b": torch.zeros(3, 2, dtype=torch.bfloat16)}) == 40 + 12


def test_strategy_registry_rejects_duplicates_and_lists_valid_names():
    with pytest.raises(ValueError, match="already registered"):

        @register_strategy("fedavg")
        class Again(Strategy):
            def aggregate(self, global_state, updates, server_round):
                return global_state

    assert "fedavg" in STRATEGIES
    with pytest.raises(ValueError, match="valid strategies: centralised, dp-fedavg, fedadagrad, fedadam, fedavg,"):
        build_strategy("fedmagic")


def test_mixing_matrix_gives_each_client_its_row_of_the_states_and_identical_rows_are_fedavg():
    from fedpeft.tensors.aggregate import mix_states

    a, b = {"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([8.0, 0.0])}
    mixed = mix_states([a, b], torch.tensor([[3.0, 1.0], [0.0, 2.0]]))
    assert torch.equal(mixed[0]["w"], torch.tensor([2.0, 3.0]))  # (3 a + 1 b) / 4
    assert torch.equal(mixed[1]["w"], b["w"])
    same = mix_states([a, b], torch.tensor([[1.0, 3.0], [1.0, 3.0]]))
    expected = weighted_average([a, b], [1, 3])
    assert all(torch.equal(m["w"], expected["w"]) for m in same)
    with pytest.raises(ValueError, match="must be 2 x 2"):
        mix_states([a, b], torch.ones(3, 3))
    with pytest.raises(ValueError, match="non-negative with a positive sum"):
        mix_states([a, b], torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
