"""How LoRA pairs are aggregated (``fl.lora_aggregation``), for any strategy.

Averaging A and B separately (``separate``, what FedIT does) gives mean(B) mean(A), which is not the mean
of the clients' updates mean(B A): the global model is one no client trained. ``product`` lets the
strategy act on each pair's product dW = B A instead (the scaling alpha / r is shared by all clients, so it
cancels), then re-factors the result to the adapter's rank r by truncated SVD: B = U_r S_r, A = V_r^T.
A keeps orthonormal rows, so a zero product (round 0) still leaves B a gradient. The relative Frobenius
residual ||dW - B A|| / ||dW|| of the truncation is returned per pair for the log.

``stack`` (FLoRA, Wang et al., 2024) is exact: the clients' pairs are concatenated, B_s = [w_1 B_1, ..., w_n B_n]
and A_s = [A_1; ...; A_n] with FedAvg's example weights w, so B_s A_s = sum_i w_i B_i A_i whatever the
clients' ranks; the rank grows with every round, so the run merges B_s A_s into the frozen base and starts
the next round from a fresh adapter (see ``experiment.run``). Only strategies whose aggregate is that
weighted mean can stack (``Strategy.stackable``).

Tensors that are not LoRA pairs (classification heads, DoRA magnitudes) are aggregated by the strategy
as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.lora_ranks import ClientRanks
from fedpeft.fl.strategies.base import PersonalisedStrategy, Strategy
from fedpeft.tensors import TensorDict
from fedpeft.tensors.aggregate import mix_states

LORA_AGGREGATION_MODES = ("separate", "product", "stack")
_A, _B, _PRODUCT = ".lora_A.", ".lora_B.", ".lora_BA."


def lora_pairs(state: TensorDict) -> dict[str, tuple[str, str]]:
    """product key -> (A key, B key) for every LoRA pair in ``state``."""
    pairs = {}
    for key in state:
        if _A in key and key.replace(_A, _B) in state:
            pairs[key.replace(_A, _PRODUCT)] = (key, key.replace(_A, _B))
    return pairs


def to_product_space(state: TensorDict) -> TensorDict:
    """``state`` with every LoRA pair (A, B) replaced by its product B A (float64)."""
    pairs = lora_pairs(state)
    paired = {k for ab in pairs.values() for k in ab}
    out = {k: v for k, v in state.items() if k not in paired}
    for product_key, (a_key, b_key) in pairs.items():
        out[product_key] = state[b_key].to(torch.float64) @ state[a_key].to(torch.float64)
    return out


def refactor(product: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A, relative residual) with B A the best rank-``rank`` approximation of ``product``."""
    u, s, vh = torch.linalg.svd(product.to(torch.float64), full_matrices=False)
    b, a = u[:, :rank] * s[:rank], vh[:rank]
    norm = float(torch.linalg.matrix_norm(product))
    residual = float(torch.linalg.matrix_norm(product - b @ a)) / norm if norm > 0 else 0.0
    return b, a, residual


def from_product_space(product_state: TensorDict, like: TensorDict) -> tuple[TensorDict, dict[str, float]]:
    """Back to LoRA pairs at the ranks and dtypes of ``like``; returns the state and the residual per pair."""
    pairs = lora_pairs(like)
    out = {k: v for k, v in product_state.items() if k not in pairs}
    residuals = {}
    for product_key, (a_key, b_key) in pairs.items():
        rank = like[a_key].shape[0]
        b, a, residuals[product_key] = refactor(product_state[product_key], rank)
        out[a_key], out[b_key] = a.to(like[a_key].dtype), b.to(like[b_key].dtype)
    return out, residuals


def check_lora_aggregation(mode: str, state: TensorDict) -> None:
    if mode not in LORA_AGGREGATION_MODES:
        raise ValueError(f"unknown fl.lora_aggregation {mode!r}; valid: {', '.join(LORA_AGGREGATION_MODES)}")
    if mode in ("product", "stack") and not lora_pairs(state):
        raise ValueError(f"fl.lora_aggregation={mode} needs LoRA adapters, but the trainable state has no LoRA pairs")


def check_stackable(strategy: Strategy) -> None:
    if not strategy.stackable:
        raise ValueError(
            f"fl.lora_aggregation=stack concatenates the clients' adapters with FedAvg's example weights; strategy "
            f"{strategy.name!r} does not aggregate by that weighted mean (stackable: fedavg, fedprox)"
        )


def stack_round(
    strategy: Strategy,
    global_state: TensorDict,
    updates: Sequence[ClientUpdate],
    server_round: int,
    ranks: ClientRanks | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], TensorDict, dict[str, float]]:
    """(A key -> (B_s, A_s) stacked over the clients at each one's rank, the other trainable tensors as the
    strategy aggregates them, figures). Products are at the adapter's global scaling."""
    check_stackable(strategy)
    if not updates:
        raise ValueError(f"round {server_round}: no client updates to stack")
    total = float(sum(u.num_examples for u in updates))
    pairs = lora_pairs(global_state)
    stacked = {}
    for a_key, b_key in pairs.values():
        bs, as_ = [], []
        for u in updates:
            r = ranks.rank_of(u.client_id) if ranks else u.state[a_key].shape[0]
            bs.append(u.state[b_key][:, :r].to(torch.float64) * (u.num_examples / total))
            as_.append(u.state[a_key][:r].to(torch.float64))
        stacked[a_key] = (torch.cat(bs, dim=1), torch.cat(as_, dim=0))
    paired = {k for ab in pairs.values() for k in ab}
    rest_global = {k: v for k, v in global_state.items() if k not in paired}
    rest = {}
    if rest_global:
        rest_updates = [replace(u, state={k: u.state[k] for k in rest_global}) for u in updates]
        rest = strategy.aggregate(rest_global, rest_updates, server_round)
    rank = next(iter(stacked.values()))[1].shape[0] if stacked else 0
    return stacked, rest, {"stacked_rank": rank} | strategy.round_figures()


def aggregate_round(
    strategy: Strategy, mode: str, global_state: TensorDict, updates: Sequence[ClientUpdate], server_round: int
) -> tuple[TensorDict, dict[str, float]]:
    """The strategy's next global state under LoRA aggregation ``mode``, and figures for the round log."""
    if mode == "separate":
        new_state = strategy.aggregate(global_state, updates, server_round)
        return new_state, strategy.round_figures()
    in_product = [replace(u, state=to_product_space(u.state)) for u in updates]
    new_product = strategy.aggregate(to_product_space(global_state), in_product, server_round)
    new_state, residuals = from_product_space(new_product, global_state)
    return new_state, _residual_figures([residuals]) | strategy.round_figures()


def aggregate_personalised_round(
    strategy: PersonalisedStrategy, mode: str, updates: Sequence[ClientUpdate], server_round: int
) -> tuple[list[TensorDict], torch.Tensor, dict[str, float]]:
    """Each updated client's next state (in the order of ``updates``), the row-normalised mixing matrix W and
    figures for the round log. In ``product`` mode the rows of W mix the clients' products B A, and each
    client's mix is re-factored to its rank."""
    weights = strategy.mixing_matrix(updates, server_round)
    weights = weights.to(torch.float64) / weights.to(torch.float64).sum(1, keepdim=True)
    if mode == "separate":
        return mix_states([u.state for u in updates], weights), weights, strategy.round_figures()
    mixed = mix_states([to_product_space(u.state) for u in updates], weights)
    states, residuals = zip(*(from_product_space(m, u.state) for m, u in zip(mixed, updates, strict=True)), strict=True)
    return list(states), weights, _residual_figures(residuals) | strategy.round_figures()


def _residual_figures(residuals: Sequence[dict[str, float]]) -> dict[str, float]:
    values = [v for r in residuals for v in r.values()]
    return {"lora_residual_max": max(values), "lora_residual_mean": sum(values) / len(values)}
