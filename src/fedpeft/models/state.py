"""The trainable state of a model as named tensors: what travels between clients and server."""

from __future__ import annotations

import torch

from fedpeft.tensors import TensorDict


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def get_trainable_state(model: torch.nn.Module) -> TensorDict:
    """A detached CPU copy of every trainable tensor, keyed by parameter name."""
    return {name: p.detach().to("cpu", copy=True) for name, p in trainable_parameters(model).items()}


def set_trainable_state(model: torch.nn.Module, state: TensorDict) -> None:
    """Copy ``state`` into the trainable parameters; names and shapes must match exactly."""
    params = trainable_parameters(model)
    missing, unexpected = params.keys() - state.keys(), state.keys() - params.keys()
    if missing or unexpected:
        raise KeyError(
            f"trainable state does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            if param.shape != state[name].shape:
                raise ValueError(
                    f"shape mismatch for {name}: model {tuple(param.shape)}, state {tuple(state[name].shape)}"
                )
            param.copy_(state[name])
