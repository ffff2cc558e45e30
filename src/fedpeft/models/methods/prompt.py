"""Prompt tuning (``peft.method=prompt``): learned virtual-token embeddings prepended to every row."""

from __future__ import annotations

from fedpeft.models.methods.base import METHODS
from fedpeft.models.methods.virtual_tokens import VirtualTokenMethod


@METHODS.register("prompt")
class PromptTuning(VirtualTokenMethod):
    """Learned virtual-token embeddings prepended to every row (prompt tuning)."""

    config_class = "PromptTuningConfig"
