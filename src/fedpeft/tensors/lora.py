"""LoRA pairs in a flat state: find them, map them to their products B A and back (truncated SVD).

Pure tensor arithmetic, shared by the LoRA aggregation modes and by strategies that compare clients'
updates (trust's cosine similarity is taken on products, which do not depend on how a pair is factored).
"""

from __future__ import annotations

import torch

from fedpeft.tensors.aggregate import TensorDict

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
