"""AdapterH (``peft.method=adapter_h``, Houlsby): a bottleneck after the attention output and after the MLP output."""

from __future__ import annotations

from fedpeft.models.methods.base import METHODS
from fedpeft.models.methods.bottleneck_adapters import BottleneckMethod


@METHODS.register("adapter_h")
class AdapterH(BottleneckMethod):
    """Houlsby bottleneck adapters after each attention and MLP output."""
