"""AdapterP (``peft.method=adapter_p``, Pfeiffer): a bottleneck after the MLP output only."""

from __future__ import annotations

from fedpeft.models.methods.base import METHODS
from fedpeft.models.methods.bottleneck_adapters import BottleneckMethod


@METHODS.register("adapter_p")
class AdapterP(BottleneckMethod):
    """Pfeiffer bottleneck adapters after each MLP output."""
