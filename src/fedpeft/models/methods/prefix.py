"""Prefix tuning (``peft.method=prefix``): learned keys and values prepended in every attention layer."""

from __future__ import annotations

from fedpeft.models.methods.base import METHODS
from fedpeft.models.methods.virtual_tokens import VirtualTokenMethod


@METHODS.register("prefix")
class PrefixTuning(VirtualTokenMethod):
    """Learned key/value prefixes in every attention layer (prefix tuning)."""

    config_class = "PrefixTuningConfig"
