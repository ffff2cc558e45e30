"""Personalised trust aggregation (S3): the mixing-matrix arithmetic against hand computations in numpy, the
trust strategy's weight kinds and selections on a fake server context, its bind-time checks, and the
personalised round through both LoRA aggregation modes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fedpeft.fl.client_round import ClientUpdate, LocalTrainingArgs
from fedpeft.fl.lora_aggregation import aggregate_personalised_round
from fedpeft.fl.strategies import build_strategy
from fedpeft.fl.strategies.base import ServerContext
from fedpeft.tensors import weighted_average
from fedpeft.tensors.aggregate import drop_below, keep_largest, mean_cosine_similarity, normalise_rows
from fedpeft.tensors.batching import TokenizedExample

# --- numpy references -------------------------------------------------------------------------------------


def np_softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_normalise(w: np.ndarray) -> np.ndarray:
    return w / w.sum(axis=1, keepdims=True)


def np_cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a.ravel() @ b.ravel() / (na * nb))


def np_mean_cosine(states: list[dict[str, torch.Tensor]]) -> np.ndarray:
    n, keys = len(states), list(states[0])
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = np.mean([np_cosine(states[i][k].double().numpy(), states[j][k].double().numpy()) for k in keys])
    return out


def np_keep_top(w: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest (the test data has no ties)."""
    out = np.zeros_like(w)
    for i, row in enumerate(w):
        top = np.argsort(-row)[:k]
        out[i, top] = row[top]
    return out


def assert_rows_sum_to_one(w: torch.Tensor) -> None:
    torch.testing.assert_close(w.sum(1), torch.ones(w.shape[0], dtype=w.dtype))


# --- aggregate.py: mean_cosine_similarity, keep_largest, drop_below, normalise_rows ----------------------


def test_mean_cosine_similarity_by_hand():
    a = {"x": torch.tensor([1.0, 0.0]), "y": torch.tensor([[2.0, 0.0, 0.0]])}
    b = {"x": torch.tensor([1.0, 1.0]), "y": torch.tensor([[0.0, 3.0, 0.0]])}
    c = {"x": torch.tensor([-3.0, 0.0]), "y": torch.tensor([[1.0, 1.0, 0.0]])}
    got = mean_cosine_similarity([a, b, c])
    r = 1 / np.sqrt(2)
    # Per pair: (cos x + cos y) / 2, each cosine worked out on paper.
    expected = np.array(
        [
            [1.0, (r + 0.0) / 2, (-1.0 + r) / 2],
            [(r + 0.0) / 2, 1.0, (-r + r) / 2],
            [(-1.0 + r) / 2, (-r + r) / 2, 1.0],
        ]
    )
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.from_numpy(expected))
    torch.testing.assert_close(got, torch.from_numpy(np_mean_cosine([a, b, c])))


def test_mean_cosine_similarity_of_a_zero_tensor_is_zero_even_to_itself():
    a = {"x": torch.zeros(3), "y": torch.tensor([1.0, 2.0])}
    b = {"x": torch.tensor([1.0, -1.0, 2.0]), "y": torch.tensor([2.0, 4.0])}
    got = mean_cosine_similarity([a, b])
    assert torch.isfinite(got).all()
    # x: 0 for every pair involving a (itself included), 1 for (b, b); y: parallel, 1 everywhere.
    expected = torch.tensor([[(0 + 1) / 2, (0 + 1) / 2], [(0 + 1) / 2, (1 + 1) / 2]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    allzero = mean_cosine_similarity([{"x": torch.zeros(2)}, {"x": torch.zeros(2)}])
    assert torch.equal(allzero, torch.zeros(2, 2, dtype=torch.float64))


def test_mean_cosine_similarity_ignores_scale_and_checks_layout():
    gen = torch.Generator().manual_seed(0)
    states = [{"x": torch.randn(4, 3, generator=gen), "y": torch.randn(5, generator=gen)} for _ in range(3)]
    scaled = [{k: v * f for k, v in s.items()} for s, f in zip(states, (0.5, 3.0, 100.0), strict=True)]
    torch.testing.assert_close(mean_cosine_similarity(scaled), mean_cosine_similarity(states))
    torch.testing.assert_close(mean_cosine_similarity(states), torch.from_numpy(np_mean_cosine(states)))
    with pytest.raises(KeyError):
        mean_cosine_similarity([{"x": torch.zeros(2)}, {"z": torch.zeros(2)}])


def test_keep_largest_keeps_the_k_largest_of_each_row():
    w = torch.tensor([[0.1, 0.5, 0.3, 0.2], [4.0, 1.0, 3.0, 2.0]], dtype=torch.float64)
    f64 = torch.float64
    assert torch.equal(keep_largest(w, 2), torch.tensor([[0.0, 0.5, 0.3, 0.0], [4.0, 0.0, 3.0, 0.0]], dtype=f64))
    assert torch.equal(keep_largest(w, 1), torch.tensor([[0.0, 0.5, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]], dtype=f64))
    assert torch.equal(keep_largest(w, 10), w)  # k beyond the row length keeps everything
    assert torch.equal(w, torch.tensor([[0.1, 0.5, 0.3, 0.2], [4.0, 1.0, 3.0, 2.0]], dtype=f64))  # not in place


def test_keep_largest_with_ties_keeps_exactly_k_of_the_largest():
    w = torch.tensor([[0.5, 0.5, 0.5, 0.1], [0.2, 0.3, 0.3, 0.3], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    for k in (1, 2, 3):
        kept = keep_largest(w, k)
        assert ((kept > 0).sum(1) == k).all()
        for row, out in zip(w, kept, strict=True):
            # Kept entries keep their value and none that was dropped is larger than one that was kept.
            assert torch.equal(out[out > 0], row[out > 0])
            assert row[out == 0].max() <= row[out > 0].min()


def test_keep_largest_breaks_ties_by_position():
    w = torch.tensor([[0.5, 0.5, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([[0.5, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(keep_largest(w, 1), expected)


def test_drop_below_drops_small_weights_but_keeps_each_rows_largest():
    w = torch.tensor([[0.6, 0.3, 0.05, 0.05], [0.04, 0.9, 0.03, 0.03], [0.25, 0.25, 0.3, 0.2]], dtype=torch.float64)
    got = drop_below(w, tau=0.1, keep_at_least=2)
    expected = torch.tensor(
        [
            [0.6, 0.3, 0.0, 0.0],  # two above tau
            [0.04, 0.9, 0.0, 0.0],  # one above tau; 0.04 survives as the second largest
            [0.25, 0.25, 0.3, 0.2],  # all above tau
        ],
        dtype=torch.float64,
    )
    assert torch.equal(got, expected)
    # A weight equal to tau is kept (">= tau").
    assert torch.equal(drop_below(torch.tensor([[0.5, 0.3, 0.2]]), 0.2, 1), torch.tensor([[0.5, 0.3, 0.2]]))
    # keep_at_least=1 with everything below tau keeps only the largest.
    assert torch.equal(drop_below(torch.tensor([[0.3, 0.4, 0.3]]), 0.5, 1), torch.tensor([[0.0, 0.4, 0.0]]))


def test_normalise_rows():
    w = torch.tensor([[1.0, 3.0], [2.0, 2.0], [0.0, 5.0]], dtype=torch.float64)
    assert torch.equal(normalise_rows(w), torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.0, 1.0]]).double())


# --- the trust strategy ----------------------------------------------------------------------------------

ARGS = LocalTrainingArgs(
    epochs=1.0,
    max_steps=None,
    batch_size=4,
    micro_batch_size=4,
    lr=1e-3,
    schedule="constant",
    warmup_ratio=0.0,
    weight_decay=0.0,
    max_grad_norm=None,
    mask_prompt=True,
    pad_id=0,
    head="causal_lm",
)
CLIENT_IDS = (3, 7, 5)  # not 0..n-1, so lookups by position instead of client id would show


def tagged_state(tag: int, seed: int) -> dict[str, torch.Tensor]:
    """A small state whose 'tag' entry tells the fake scoring functions which model they got."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "layer.lora_A.weight": torch.randn(2, 3, generator=gen),
        "layer.lora_B.weight": torch.randn(4, 2, generator=gen),
        "tag": torch.tensor([float(tag)]),
    }


def tag_of(state: dict[str, torch.Tensor]) -> int:
    return int(state["tag"].item())


def make_updates(states, client_ids=CLIENT_IDS) -> list[ClientUpdate]:
    return [ClientUpdate(cid, s, 10, 1, 0.0, 0.0) for cid, s in zip(client_ids, states, strict=True)]


def val_rows(cid: int, n: int = 2) -> list[TokenizedExample]:
    return [TokenizedExample(input_ids=(cid, 100 + r), prompt_len=1) for r in range(n)]


def context(
    losses: dict[tuple[int, int], float] | None = None,
    probabilities: dict[int, torch.Tensor] | None = None,
    categories: dict[int, dict[str, int]] | None = None,
    server_rows: int = 6,
    client_val: dict[int, list[TokenizedExample]] | None = None,
    args=ARGS,
    calls: list | None = None,
) -> ServerContext:
    """A ServerContext with fixed scores: ``losses[(model tag, validation client)]`` and
    ``probabilities[model tag]``."""

    def loss(state, examples):
        owners = {e.input_ids[0] for e in examples}
        assert len(owners) == 1, "each loss call scores one client's validation rows"
        return losses[(tag_of(state), owners.pop())]

    def probs(state, examples):
        if calls is not None:
            calls.append(list(examples))
        return probabilities[tag_of(state)].clone()

    return ServerContext(
        model=None,
        args=args,
        seed=0,
        server_data=[TokenizedExample(input_ids=(900 + r, 1), prompt_len=1) for r in range(server_rows)],
        client_val=client_val if client_val is not None else {cid: val_rows(cid) for cid in CLIENT_IDS},
        client_categories=categories or {cid: {"a": 1, "b": 1} for cid in CLIENT_IDS},
        loss=loss,
        probabilities=probs,
    )


def trust(ctx: ServerContext | None = None, **settings):
    strategy = build_strategy("trust", settings)
    if ctx is not None:
        strategy.bind(ctx)
    return strategy


STATES = [tagged_state(t, seed=10 + t) for t in range(3)]

# LOSSES[(model tag j, validation client cid)]; as a matrix over (client i, model j) in the order of CLIENT_IDS.
LOSS_MATRIX = np.array([[0.2, 0.9, 1.4], [1.1, 0.3, 0.7], [0.5, 0.6, 0.4]])
LOSSES = {(j, cid): float(LOSS_MATRIX[i, j]) for i, cid in enumerate(CLIENT_IDS) for j in range(3)}


def test_naive_weights_are_uniform():
    w = trust(weights="naive").mixing_matrix(make_updates(STATES), server_round=1)
    assert torch.equal(w, torch.full((3, 3), 1 / 3, dtype=torch.float64))


@pytest.mark.parametrize("weights", ["naive", "static", "dynamic", "dynamic-ref", "dynamic-token"])
def test_warmup_rounds_train_locally(weights):
    probs = {t: torch.full((2, 4), 0.25) + 0.01 * t * torch.tensor([1.0, -1.0, 0.0, 0.0]) for t in range(3)}
    cats = {3: {"a": 2}, 7: {"b": 1}, 5: {"a": 1, "b": 1}}
    ctx = context(losses=LOSSES, probabilities=probs, categories=cats)
    strategy = trust(ctx, weights=weights, warmup_rounds=2)
    updates = make_updates(STATES)
    for rnd in (1, 2):
        assert torch.equal(strategy.mixing_matrix(updates, rnd), torch.eye(3, dtype=torch.float64))
    after = strategy.mixing_matrix(updates, 3)
    assert not torch.equal(after, torch.eye(3, dtype=torch.float64))
    assert_rows_sum_to_one(after)


def test_a_single_client_round_is_the_identity():
    w = trust(weights="naive").mixing_matrix(make_updates(STATES[:1], [3]), server_round=5)
    assert torch.equal(w, torch.ones(1, 1, dtype=torch.float64))


def test_static_weights_are_the_normalised_category_overlap():
    cats = {3: {"a": 3, "b": 1}, 7: {"b": 2}, 5: {"a": 1, "c": 1}}
    strategy = trust(context(categories=cats), weights="static")
    w = strategy.mixing_matrix(make_updates(STATES), server_round=1)
    d = np.array([[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])  # columns a, b, c; rows sum to 1
    expected = np_normalise(d @ d.T)
    torch.testing.assert_close(w, torch.from_numpy(expected))
    assert_rows_sum_to_one(w)
    # Clients 7 and 5 share no category: they do not trust each other at all.
    assert w[1, 2] == 0 and w[2, 1] == 0


def as_products(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The LoRA pair as its product B A (by hand), other tensors as they are."""
    return {"BA": state["layer.lora_B.weight"] @ state["layer.lora_A.weight"], "tag": state["tag"]}


def test_dynamic_weights_are_a_softmax_of_the_mean_cosine_similarity_of_the_products():
    strategy = trust(context(), weights="dynamic", scale=3.0)
    w = strategy.mixing_matrix(make_updates(STATES), server_round=1)
    expected = np_softmax_rows(3.0 * np_mean_cosine([as_products(x) for x in STATES]))
    torch.testing.assert_close(w, torch.from_numpy(expected))
    assert_rows_sum_to_one(w)
    # Re-factoring a pair (B Q)(Q^T A) with an orthogonal Q changes its factors, not the weights.
    q, _ = torch.linalg.qr(torch.randn(2, 2, generator=torch.Generator().manual_seed(5)))
    rotated = [
        x | {"layer.lora_A.weight": q.T @ x["layer.lora_A.weight"], "layer.lora_B.weight": x["layer.lora_B.weight"] @ q}
        for x in STATES
    ]
    torch.testing.assert_close(strategy.mixing_matrix(make_updates(rotated), server_round=1), w)


def test_dynamic_ref_weights_are_a_softmax_of_minus_perplexity_on_each_clients_validation_rows():
    strategy = trust(context(losses=LOSSES), weights="dynamic-ref", scale=2.0)
    w = strategy.mixing_matrix(make_updates(STATES), server_round=1)
    # Row i: client i's validation rows scored by every model j.
    expected = np_softmax_rows(-2.0 * np.exp(LOSS_MATRIX))
    torch.testing.assert_close(w, torch.from_numpy(expected))
    assert_rows_sum_to_one(w)
    # Each client trusts most the model with the lowest loss on its own rows.
    assert w.argmax(1).tolist() == LOSS_MATRIX.argmin(1).tolist()


def test_dynamic_ref_order_follows_the_updates_not_the_client_ids():
    order = [2, 0, 1]
    ids = [CLIENT_IDS[i] for i in order]
    w = trust(context(losses=LOSSES), weights="dynamic-ref").mixing_matrix(
        make_updates([STATES[i] for i in order], ids), server_round=1
    )
    expected = np_softmax_rows(-np.exp(LOSS_MATRIX[np.ix_(order, order)]))
    torch.testing.assert_close(w, torch.from_numpy(expected))


def test_dynamic_ref_survives_a_diverged_model():
    losses = dict(LOSSES) | {(1, cid): 1e4 for cid in CLIENT_IDS}  # exp(1e4) overflows float64
    w = trust(context(losses=losses), weights="dynamic-ref").mixing_matrix(make_updates(STATES), server_round=1)
    assert torch.isfinite(w).all()
    assert_rows_sum_to_one(w)
    assert (w[:, 1] < 1e-12).all()
    # A row where every model diverged is uniform rather than NaN.
    every = {(j, cid): 1e4 for j in range(3) for cid in CLIENT_IDS}
    w = trust(context(losses=every), weights="dynamic-ref").mixing_matrix(make_updates(STATES), server_round=1)
    torch.testing.assert_close(w, torch.full((3, 3), 1 / 3, dtype=torch.float64))


PROBS_RNG = np.random.default_rng(4)
PROBS = {t: torch.from_numpy(PROBS_RNG.dirichlet(np.ones(6), size=5)).float() for t in range(3)}  # 5 positions


def np_token_distances(probs: list[np.ndarray], top: int) -> np.ndarray:
    """Mean over positions of the L1 distance on the outputs with the highest mean probability there."""
    mean = np.mean(probs, axis=0)
    n, positions = len(probs), mean.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            total = 0.0
            for pos in range(positions):
                chosen = np.argsort(-mean[pos])[:top]
                total += np.abs(probs[i][pos, chosen] - probs[j][pos, chosen]).sum()
            out[i, j] = total / positions
    return out


@pytest.mark.parametrize("top_tokens", [2, 6, 50])
def test_dynamic_token_weights_compare_output_distributions_on_the_jointly_top_rated_outputs(top_tokens):
    calls: list = []
    ctx = context(probabilities=PROBS, server_rows=6, calls=calls)
    strategy = trust(ctx, weights="dynamic-token", token_scale=7.0, top_tokens=top_tokens, reference_rows=4)
    w = strategy.mixing_matrix(make_updates(STATES), server_round=1)
    probs = [PROBS[t].double().numpy() for t in range(3)]
    expected = np_softmax_rows(-7.0 * np_token_distances(probs, min(top_tokens, 6)))
    torch.testing.assert_close(w, torch.from_numpy(expected))
    assert_rows_sum_to_one(w)
    # Only the first reference_rows of the server's rows are the reference set.
    assert calls and all(c == list(ctx.server_data[:4]) for c in calls)


def test_dynamic_token_picks_outputs_per_position_by_the_mean_of_all_models():
    # Two positions, four outputs, top_tokens=1: at position 0 the jointly top output is 0 although model 1
    # rates output 1 highest; at position 1 it is output 3.
    p0 = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    p1 = torch.tensor([[0.4, 0.5, 0.05, 0.05], [0.1, 0.1, 0.2, 0.6]])
    p2 = torch.tensor([[0.6, 0.2, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]])
    ctx = context(probabilities={0: p0, 1: p1, 2: p2})
    w = trust(ctx, weights="dynamic-token", top_tokens=1, token_scale=5.0).mixing_matrix(
        make_updates(STATES), server_round=1
    )
    picked = np.array([[0.7, 0.7], [0.4, 0.6], [0.6, 0.2]])  # output 0 at position 0, output 3 at position 1
    distance = np.abs(picked[:, None, :] - picked[None, :, :]).sum(-1) / 2
    torch.testing.assert_close(w, torch.from_numpy(np_softmax_rows(-5.0 * distance)))


def scores_for_selection() -> np.ndarray:
    """The dynamic-ref weights the selection tests start from, with rows shaped to exercise tau."""
    return np_softmax_rows(-np.exp(LOSS_MATRIX))


def test_thresh_drops_weights_below_tau_but_keeps_two_per_row():
    raw = scores_for_selection()
    tau = 0.3
    # The scenario needs a row with fewer than two weights >= tau and one with a weight dropped by tau.
    assert ((raw >= tau).sum(1) < 2).any() and ((raw < tau).sum(1) >= 1).any()
    expected = np.where((raw >= tau) | (np_keep_top(raw, 2) > 0), raw, 0.0)
    expected = np_normalise(expected)
    w = trust(context(losses=LOSSES), weights="dynamic-ref", select="thresh", tau=tau).mixing_matrix(
        make_updates(STATES), server_round=1
    )
    torch.testing.assert_close(w, torch.from_numpy(expected))
    assert_rows_sum_to_one(w)
    assert ((w > 0).sum(1) >= 2).all()


def test_thresh_with_tau_zero_keeps_everything():
    w = trust(context(losses=LOSSES), weights="dynamic-ref", select="thresh", tau=0.0).mixing_matrix(
        make_updates(STATES), server_round=1
    )
    torch.testing.assert_close(w, torch.from_numpy(scores_for_selection()))


def test_thresh_compares_tau_with_row_normalised_weights():
    # Static weights D D^T are not normalised; tau applies to their normalised rows.
    cats = {3: {"a": 3, "b": 1}, 7: {"b": 2, "c": 1}, 5: {"a": 1, "c": 2}}
    d = np.array([[0.75, 0.25, 0.0], [0.0, 2 / 3, 1 / 3], [1 / 3, 0.0, 2 / 3]])
    tau = 0.17
    raw, normalised = d @ d.T, np_normalise(d @ d.T)
    assert ((raw < tau) & (normalised >= tau) & (np_keep_top(raw, 2) == 0)).any()  # normalising first matters
    expected = np_normalise(np.where((normalised >= tau) | (np_keep_top(normalised, 2) > 0), normalised, 0.0))
    w = trust(context(categories=cats), weights="static", select="thresh", tau=tau).mixing_matrix(
        make_updates(STATES), server_round=1
    )
    torch.testing.assert_close(w, torch.from_numpy(expected))
    assert (w == 0).sum() == 1  # row 0 drops client 7 (its smallest weight, below tau)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_keeps_each_rows_k_largest(k):
    raw = scores_for_selection()
    w = trust(context(losses=LOSSES), weights="dynamic-ref", select="top-k", top_k=k).mixing_matrix(
        make_updates(STATES), server_round=1
    )
    torch.testing.assert_close(w, torch.from_numpy(np_normalise(np_keep_top(raw, min(k, 3)))))
    assert ((w > 0).sum(1) == min(k, 3)).all()
    assert_rows_sum_to_one(w)


def test_top_k_on_static_weights():
    cats = {3: {"a": 3, "b": 1}, 7: {"b": 2, "c": 1}, 5: {"a": 1, "c": 2}}
    w = trust(context(categories=cats), weights="static", select="top-k", top_k=2).mixing_matrix(
        make_updates(STATES), server_round=1
    )
    d = np.array([[0.75, 0.25, 0.0], [0.0, 2 / 3, 1 / 3], [1 / 3, 0.0, 2 / 3]])
    raw = d @ d.T
    assert all(len(set(r)) == 3 for r in raw)  # no ties within a row
    torch.testing.assert_close(w, torch.from_numpy(np_normalise(np_keep_top(raw, 2))))


def test_scoring_weights_need_the_strategy_to_be_bound():
    for weights in ("static", "dynamic", "dynamic-ref", "dynamic-token"):
        with pytest.raises(RuntimeError, match="bound"):
            trust(weights=weights).mixing_matrix(make_updates(STATES), server_round=1)


# --- bind-time checks ------------------------------------------------------------------------------------


def test_static_needs_more_than_one_category():
    one = {cid: {"news": 5} for cid in CLIENT_IDS}
    with pytest.raises(ValueError, match=r"weights=static.*1 category \(\['news'\]\)"):
        trust(context(categories=one), weights="static")
    trust(context(categories={3: {"news": 5}, 7: {"code": 1}, 5: {"news": 1}}), weights="static")


def test_dynamic_ref_needs_validation_rows_for_every_client():
    val = {3: val_rows(3), 7: [], 5: val_rows(5)}
    with pytest.raises(ValueError, match=r"dynamic-ref.*\[7\].*data\.val_fraction"):
        trust(context(client_val=val), weights="dynamic-ref")
    trust(context(client_val=val), weights="dynamic")  # other weights do not need them


def test_dynamic_token_needs_server_rows_and_an_output_distribution():
    with pytest.raises(ValueError, match=r"dynamic-token.*data\.server_fraction"):
        trust(context(server_rows=0), weights="dynamic-token")
    with pytest.raises(ValueError, match="embedding"):
        trust(context(args=SimpleNamespace(head="embedding")), weights="dynamic-token")
    trust(context(server_rows=0), weights="dynamic-ref")  # other weights do not need them
    trust(context(args=SimpleNamespace(head="sequence_classification")), weights="dynamic-token")


# --- settings --------------------------------------------------------------------------------------------


def test_settings_are_validated_when_the_strategy_is_built():
    with pytest.raises(
        ValueError, match="weights='cosine' is not one of naive, static, dynamic, dynamic-ref, dynamic-token"
    ):
        build_strategy("trust", {"weights": "cosine"})
    with pytest.raises(ValueError, match="select='top3' is not one of all, thresh, top-k"):
        build_strategy("trust", {"select": "top3"})
    with pytest.raises(ValueError, match="top_k=0 must be >= 1"):
        build_strategy("trust", {"top_k": 0})
    with pytest.raises(ValueError, match="tau=1.0 must be in"):
        build_strategy("trust", {"tau": 1.0})
    with pytest.raises(ValueError, match="warmup_rounds=-1"):
        build_strategy("trust", {"warmup_rounds": -1})
    with pytest.raises(ValueError, match="scale and token_scale must be > 0"):
        build_strategy("trust", {"token_scale": 0})
    with pytest.raises(ValueError, match="does not take"):
        build_strategy("trust", {"weight": "naive"})
    assert build_strategy("trust", {"scale": 2}).settings.scale == 2.0
    assert build_strategy("trust").personalised


# --- the personalised round ------------------------------------------------------------------------------


def lora_state(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "layer.lora_A.weight": torch.randn(2, 5, generator=gen),
        "layer.lora_B.weight": torch.randn(6, 2, generator=gen),
        "head.weight": torch.randn(3, generator=gen),
    }


def test_local_strategy_leaves_every_state_as_it_was():
    states = [lora_state(s) for s in (1, 2, 3)]
    originals = [{k: v.clone() for k, v in s.items()} for s in states]
    out, w, _ = aggregate_personalised_round(build_strategy("local"), "separate", make_updates(states), 4)
    assert torch.equal(w, torch.eye(3, dtype=torch.float64))
    for got, ref in zip(out, originals, strict=True):
        assert got.keys() == ref.keys()
        for k in ref:
            assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k])


def test_local_strategy_in_product_mode_keeps_each_clients_own_factors():
    states = [lora_state(s) for s in (1, 2, 3)]
    out, _, figures = aggregate_personalised_round(build_strategy("local"), "product", make_updates(states), 4)
    for got, ref in zip(out, states, strict=True):
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    assert "lora_residual_max" not in figures  # nothing was re-factored


def test_naive_trust_gives_every_client_the_plain_mean():
    states = [lora_state(s) for s in (1, 2, 3)]
    out, w, _ = aggregate_personalised_round(trust(weights="naive"), "separate", make_updates(states), 1)
    mean = weighted_average(states, [1.0, 1.0, 1.0])
    torch.testing.assert_close(w, torch.full((3, 3), 1 / 3, dtype=torch.float64))
    for got in out:
        assert got.keys() == mean.keys()
        for k in mean:
            assert got[k].dtype == states[0][k].dtype
            torch.testing.assert_close(got[k], mean[k])
            torch.testing.assert_close(got[k], (states[0][k] + states[1][k] + states[2][k]) / 3)


def test_personalised_round_mixes_by_the_normalised_rows_of_w():
    states = [lora_state(s) for s in (4, 5, 6)]
    ctx = context(categories={3: {"a": 3, "b": 1}, 7: {"b": 2}, 5: {"a": 1, "c": 1}})
    out, w, _ = aggregate_personalised_round(trust(ctx, weights="static"), "separate", make_updates(states), 1)
    assert_rows_sum_to_one(w)
    for i, got in enumerate(out):
        expected = weighted_average(states, w[i].tolist())
        for k in expected:
            torch.testing.assert_close(got[k], expected[k])


@pytest.mark.parametrize("weights", ["naive", "dynamic"])
def test_identical_clients_in_product_mode_get_their_own_product(weights):
    same = lora_state(7)
    updates = make_updates([same, same, same])
    out, _, figures = aggregate_personalised_round(trust(context(), weights=weights), "product", updates, 1)
    product = same["layer.lora_B.weight"] @ same["layer.lora_A.weight"]
    for got in out:
        assert got["layer.lora_A.weight"].shape == (2, 5) and got["layer.lora_B.weight"].shape == (6, 2)
        torch.testing.assert_close(got["layer.lora_B.weight"] @ got["layer.lora_A.weight"], product)
        torch.testing.assert_close(got["head.weight"], same["head.weight"])
    assert figures["lora_residual_max"] < 1e-6


def test_naive_trust_in_product_mode_mixes_the_products():
    states = [lora_state(s) for s in (1, 2)]
    out, _, _ = aggregate_personalised_round(trust(weights="naive"), "product", make_updates(states, [0, 1]), 1)
    mean_product = sum(s["layer.lora_B.weight"].double() @ s["layer.lora_A.weight"].double() for s in states) / 2
    # Rank 2 holds the mean of two rank-2 products only approximately: compare with its best rank-2 fit.
    u, s, vh = torch.linalg.svd(mean_product)
    best = (u[:, :2] * s[:2]) @ vh[:2]
    for got in out:
        torch.testing.assert_close(got["layer.lora_B.weight"].double() @ got["layer.lora_A.weight"].double(), best)
