"""Bottleneck adapters (S2's AdapterH, AdapterP and Parallel adapter) as a small module of our own.

Why not a library: ``adapters`` (1.3.0) requires transformers ~= 4.57 and fedpeft runs transformers 5, and
peft has no bottleneck adapters. So: a bottleneck x -> up(act(down(x))) with ``up`` zero-initialised (the
adapted model starts exactly as the base), attached as a submodule of the block it adapts and applied by a
forward hook, so the base modules' code is untouched:
- ``adapter_h`` (Houlsby): after the attention output and after the MLP output, h + f(h);
- ``adapter_p`` (Pfeiffer): after the MLP output only;
- ``parallel``: beside the MLP, mlp(x) + f(x), reading the MLP's input.
Blocks are found by name: each decoder layer's attention (``self_attn`` or ``attn``) and ``mlp``, which covers
Llama-family and GPT-2-family models; other architectures are an error naming the supported ones.

Saved like a peft adapter directory: ``adapter_config.json`` (``peft_type: BOTTLENECK``, kind, size,
activation) and ``adapter_model.safetensors`` with the adapter tensors; :func:`load_bottleneck` re-attaches
the adapters to a fresh base and loads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

BOTTLENECK_KINDS = ("adapter_h", "adapter_p", "parallel")
ATTENTION_NAMES, MLP_NAMES = ("self_attn", "attn"), ("mlp",)
ADAPTER_NAME = "bottleneck_adapter"
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class Bottleneck(nn.Module):
    def __init__(self, width: int, size: int, activation: str):
        super().__init__()
        self.down = nn.Linear(width, size)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(size, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


def _after_output(module: nn.Module, inputs: tuple, output):
    adapter = getattr(module, ADAPTER_NAME)
    if isinstance(output, tuple):  # attention returns (hidden, weights, ...)
        return (output[0] + adapter(output[0]), *output[1:])
    return output + adapter(output)


def _beside(module: nn.Module, inputs: tuple, output):
    return output + getattr(module, ADAPTER_NAME)(inputs[0])


def _targets(model: nn.Module, kind: str) -> list[tuple[nn.Module, object]]:
    """(module, hook) for every block the kind adapts."""
    wanted = MLP_NAMES if kind != "adapter_h" else (*ATTENTION_NAMES, *MLP_NAMES)
    found = []
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in wanted and (".layers." in f".{name}." or ".h." in f".{name}."):
            found.append((module, _beside if kind == "parallel" else _after_output))
    return found


def add_bottlenecks(model: nn.Module, kind: str, size: int, activation: str = "relu") -> list[str]:
    """Attach bottleneck adapters of ``kind`` and make them (and only them, plus a classification head the
    caller keeps trainable) trainable; returns the adapted module names."""
    if kind not in BOTTLENECK_KINDS:
        raise ValueError(f"unknown bottleneck kind {kind!r}; valid: {', '.join(BOTTLENECK_KINDS)}")
    targets = _targets(model, kind)
    if not targets:
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise ValueError(
            f"peft.method={kind} finds no decoder blocks (attention 'self_attn'/'attn' and 'mlp' inside "
            f"'layers' or 'h') in model type {model_type!r}; it applies to Llama- and GPT-2-family models"
        )
    width = model.config.hidden_size
    # Dtype and device of the hidden states: the embeddings' (a quantised base's linear weights are integers).
    reference = model.get_input_embeddings().weight
    names = []
    for module, hook in targets:
        module.add_module(
            ADAPTER_NAME, Bottleneck(width, size, activation).to(device=reference.device, dtype=reference.dtype)
        )
        module.register_forward_hook(hook)
        names.append(next(n for n, m in model.named_modules() if m is module))
    return names


def bottleneck_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if f".{ADAPTER_NAME}." in k}


def save_bottleneck(model: nn.Module, where: Path, kind: str, size: int, activation: str) -> None:
    from safetensors.torch import save_file

    where.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "BOTTLENECK",
        "kind": kind,
        "size": size,
        "activation": activation,
        "base_model_type": getattr(model.config, "model_type", None),
    }
    (where / "adapter_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in bottleneck_state(model).items()}
    head = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith("score.")}
    save_file(state | head, str(where / "adapter_model.safetensors"))


def load_bottleneck(model: nn.Module, where: Path) -> nn.Module:
    """Attach the adapters described in ``where`` to ``model`` (a fresh base) and load their weights."""
    from safetensors.torch import load_file

    config = json.loads((Path(where) / "adapter_config.json").read_text())
    if config.get("peft_type") != "BOTTLENECK":
        raise ValueError(f"{where} is not a bottleneck adapter directory (peft_type {config.get('peft_type')!r})")
    add_bottlenecks(model, config["kind"], config["size"], config["activation"])
    missing, unexpected = model.load_state_dict(load_file(str(Path(where) / "adapter_model.safetensors")), strict=False)
    if unexpected or any(f".{ADAPTER_NAME}." in k for k in missing):
        raise ValueError(f"{where}: adapter tensors do not match the model (unexpected {unexpected[:3]})")
    return model
