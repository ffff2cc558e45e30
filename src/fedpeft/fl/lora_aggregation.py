"""How LoRA pairs are aggregated (``fl.lora_aggregation``), for any strategy.

Averaging A and B separately (``separate``, what FedIT does) gives mean(B) mean(A), which is not the mean
of the clients' updates mean(B A): the global model is one no client trained. ``product`` lets the
strategy act on each pair's product dW = B A instead (the scaling alpha / r is shared by all clients, so it
cancels), then re-factors the result to the adapter's rank r by truncated SVD: B = U_r S_r, A = V_r^T.
A keeps orthonormal rows, so a zero product (round 0) still leaves B a gradient. The relative Frobenius
residual ||dW - B A|| / ||dW|| of the truncation is returned per pair for the log.

Tensors that are not LoRA pairs (classification heads, DoRA magnitudes) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies.base import PersonalisedStrategy, Strategy
from fedpeft.tensors import TensorDict
from fedpeft.tensors.aggregate import mix_states

LORA_AGGREGATION_MODES = ("separate", "product")
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
    if mode == "product" and not lora_pairs(state):
        raise ValueError("fl.lora_aggregation=product needs LoRA adapters, but the trainable state has no LoRA pairs")


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
