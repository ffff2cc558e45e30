"""P-tuning (``peft.method=ptuning``): virtual tokens produced by a trained prompt encoder."""

from __future__ import annotations

from fedpeft.models.methods.base import METHODS
from fedpeft.models.methods.virtual_tokens import VirtualTokenMethod


@METHODS.register("ptuning")
class PTuning(VirtualTokenMethod):
    """Virtual tokens from a trained prompt encoder (P-tuning)."""

    config_class = "PromptEncoderConfig"
