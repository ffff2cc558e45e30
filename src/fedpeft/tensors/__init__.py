"""Pure arithmetic over named tensors (``dict[str, Tensor]``). Imports neither Flower nor transformers,
so strategies built on it are testable with hand-made dicts."""

from __future__ import annotations

from fedpeft.tensors.aggregate import TensorDict, weighted_average


def payload_bytes(state: TensorDict) -> int:
    """Bytes on the wire for ``state`` at its own dtypes (tensor data only)."""
    return sum(t.numel() * t.element_size() for t in state.values())


__all__ = ["TensorDict", "payload_bytes", "weighted_average"]
