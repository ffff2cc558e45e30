"""Parallel adapter (``peft.method=parallel``): a bottleneck beside each MLP, reading its input."""

from __future__ import annotations

from fedpeft.models.methods.base import METHODS
from fedpeft.models.methods.bottleneck_adapters import BottleneckMethod


@METHODS.register("parallel")
class ParallelAdapter(BottleneckMethod):
    """Bottleneck adapters beside each MLP (parallel adapter)."""
