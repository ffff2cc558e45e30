"""LoRA layers in place, on a peft model: per-client scaling, merging stacked updates into the frozen base,
re-initialising pairs, and writing an adapter that holds every merged round (``fl.lora_aggregation=stack``).

Flat-state arithmetic over pairs (products, SVD re-factoring) is :mod:`fedpeft.tensors.lora`; this module
works on the model's modules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from fedpeft.tensors.lora import LORA_A, LORA_A_KEY, LORA_B_KEY


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Module name -> every peft LoRA layer of ``model`` (modules holding peft's ``lora_A``)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, LORA_A) and hasattr(m, "scaling")}


def lora_layer_name(state_key: str) -> str:
    """The module name a LoRA state key (``...q_proj.lora_A.default.weight``) belongs to."""
    marker = LORA_A_KEY if LORA_A_KEY in state_key else LORA_B_KEY
    return state_key.split(marker)[0]


@contextmanager
def scaled_lora(model: torch.nn.Module, factor: float) -> Iterator[None]:
    """Multiply every LoRA layer's scaling (alpha / r) by ``factor`` for the block: a client training a
    rank-r_i adapter inside the global rank-R layer uses alpha / r_i, i.e. factor R / r_i."""
    if factor == 1.0:
        yield
        return
    layers = lora_layers(model).values()
    saved = [dict(layer.scaling) for layer in layers]
    for layer in layers:
        for adapter in layer.scaling:
            layer.scaling[adapter] *= factor
    try:
        yield
    finally:
        for layer, scaling in zip(layers, saved, strict=True):
            layer.scaling.clear()
            layer.scaling.update(scaling)


def lora_scaling(model: torch.nn.Module) -> float:
    """The scaling alpha / r shared by the model's LoRA layers."""
    values = {s for layer in lora_layers(model).values() for s in layer.scaling.values()}
    if len(values) != 1:
        raise ValueError(f"LoRA layers disagree on their scaling: {sorted(values)}")
    return values.pop()


@torch.no_grad()
def merge_into_base(model: torch.nn.Module, layer_name: str, delta: torch.Tensor) -> None:
    """Add ``delta`` (out x in, already scaled) to the frozen base weight under a LoRA layer."""
    layer = model.get_submodule(layer_name)
    weight = layer.get_base_layer().weight
    if getattr(layer, "fan_in_fan_out", False):  # GPT-2's Conv1D stores (in, out)
        delta = delta.T
    if delta.shape != weight.shape:
        raise ValueError(f"{layer_name}: a delta of shape {tuple(delta.shape)} does not fit {tuple(weight.shape)}")
    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))


def reset_lora(model: torch.nn.Module) -> None:
    """Re-initialise every LoRA pair as peft does for a new adapter (A random, B zero); seed it outside."""
    for layer in lora_layers(model).values():
        for adapter in list(getattr(layer, LORA_A)):
            layer.reset_lora_parameters(adapter, True)


def merge_pairs(model: torch.nn.Module, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Add scaling * B A of every stacked pair to the frozen base weight it adapts."""
    scale = lora_scaling(model)
    for a_key, (b, a) in pairs.items():
        merge_into_base(model, lora_layer_name(a_key), scale * (b.to(torch.float64) @ a.to(torch.float64)))


def save_stacked_lora(
    model: torch.nn.Module,
    trainable: dict[str, torch.Tensor],
    merged: list[dict[str, tuple[torch.Tensor, torch.Tensor]]],
    where: Path,
) -> None:
    """Rewrite the adapter that ``model.save_pretrained`` wrote in ``where`` as one LoRA adapter holding every
    merged round of stacked pairs (per pair their concatenation, rank R_total) with lora_alpha = scaling x
    R_total, so that peft's alpha / r is the run's scaling. Loaded on the original base it gives the model
    with every round merged; ``trainable`` supplies the other tensors (a classification head)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    scale = lora_scaling(model)
    tensors = dict(trainable)
    for a_key in merged[0]:
        b_key = a_key.replace(LORA_A_KEY, LORA_B_KEY)
        dtype = trainable[a_key].dtype
        tensors[b_key] = torch.cat([r[a_key][0] for r in merged], dim=1).to(dtype)
        tensors[a_key] = torch.cat([r[a_key][1] for r in merged], dim=0).to(dtype)
    total_rank = tensors[next(iter(merged[0]))].shape[0]
    saved = get_peft_model_state_dict(model, state_dict=tensors)
    save_file({k: v.contiguous() for k, v in saved.items()}, str(where / "adapter_model.safetensors"))
    config_path = where / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(r=total_rank, lora_alpha=scale * total_rank)
    config_path.write_text(json.dumps(config, indent=2))
