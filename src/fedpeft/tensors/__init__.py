"""Pure arithmetic over named tensors (``dict[str, Tensor]``). Imports neither Flower nor transformers,
so strategies built on it are testable with hand-made dicts."""

from __future__ import annotations

import torch

from fedpeft.tensors.aggregate import TensorDict, weighted_average


def payload_bytes(state: TensorDict, transport: torch.dtype | None = None) -> int:
    """Bytes on the wire for ``state`` (tensor data only): at its own dtypes, or with floating-point tensors
    sent as ``transport``."""
    size = torch.tensor([], dtype=transport).element_size() if transport is not None else None
    return sum(t.numel() * (size if size and t.is_floating_point() else t.element_size()) for t in state.values())


def through_transport(state: TensorDict, transport: torch.dtype | None) -> TensorDict:
    """What the receiver holds after ``state`` travels as ``transport``: floating-point tensors rounded to
    it and back to their own dtype (the identity when ``transport`` is None or the tensors' own dtype)."""
    if transport is None:
        return state
    return {k: v.to(transport).to(v.dtype) if v.is_floating_point() else v for k, v in state.items()}


__all__ = ["TensorDict", "payload_bytes", "through_transport", "weighted_average"]
