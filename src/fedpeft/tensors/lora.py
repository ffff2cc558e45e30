"""LoRA pairs in a flat state: find them, map them to their products B A and back (truncated SVD).

Pure tensor arithmetic, shared by the LoRA aggregation modes and by strategies that compare clients'
updates (trust's cosine similarity is taken on products, which do not depend on how a pair is factored).
The names that mark LoRA tensors (peft's ``lora_A`` / ``lora_B``, DoRA's magnitude) are defined here, once.
"""

from __future__ import annotations

import torch

from fedpeft.tensors.aggregate import TensorDict

LORA_A, LORA_B = "lora_A", "lora_B"
"""peft's names for a LoRA pair's down (A, r x in) and up (B, out x r) projections: module attributes and
parts of state keys (``...q_proj.lora_A.default.weight``)."""
LORA_A_KEY, LORA_B_KEY = f".{LORA_A}.", f".{LORA_B}."
"""The substrings that mark a state key as one side of a pair; swapping them finds the other side."""
LORA_PRODUCT_KEY = ".lora_BA."
"""Marks the key of a pair's product B A in a product-space state."""
DORA_MAGNITUDE = "lora_magnitude_vector"
"""peft's name for DoRA's trained magnitude per output (a tensor beside the pair, not part of it)."""


def lora_pairs(state: TensorDict) -> dict[str, tuple[str, str]]:
    """product key -> (A key, B key) for every LoRA pair in ``state``."""
    pairs = {}
    for key in state:
        if LORA_A_KEY in key and key.replace(LORA_A_KEY, LORA_B_KEY) in state:
            pairs[key.replace(LORA_A_KEY, LORA_PRODUCT_KEY)] = (key, key.replace(LORA_A_KEY, LORA_B_KEY))
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
