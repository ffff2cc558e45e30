"""The methods peft implements (LoRA, IA3, prompt, P-tuning and prefix tuning): each builds a peft config,
and this base wraps the model with it and saves a peft adapter directory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedpeft.models.methods.base import METHODS, PEFT_TASK_TYPES, PeftMethod, SharedSettings

if TYPE_CHECKING:
    import torch


class PeftLibraryMethod(PeftMethod):
    """A method peft applies from the config that ``peft_config`` builds."""

    @classmethod
    def peft_config(cls, model: torch.nn.Module, settings: Any, shared: SharedSettings, task_type: str) -> Any:
        raise NotImplementedError

    @classmethod
    def apply(cls, model: torch.nn.Module, settings: Any, shared: SharedSettings, head: str) -> torch.nn.Module:
        """A peft model whose only trainable tensors are the method's (plus a classification head, peft's
        modules_to_save, which then travels with the adapter). A method peft cannot apply to this model is a
        ValueError naming the method, the model type and the head."""
        from peft import get_peft_model

        model_type = getattr(model.config, "model_type", "?")
        config = cls.peft_config(model, settings, shared, PEFT_TASK_TYPES[head])
        try:
            return get_peft_model(model, config)
        except (ValueError, TypeError, AttributeError, NotImplementedError, KeyError) as err:
            raise ValueError(
                f"peft.method={cls.name} does not apply to model type {model_type!r} with a {head} head ({err}); "
                f"try another of: {', '.join(METHODS.names())}"
            ) from None
