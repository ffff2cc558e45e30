"""Round checkpoints with the full federated state.

``checkpoints/round-NNNN/`` holds ``global.safetensors`` (the global trainable state),
``strategy.safetensors`` (tensor-valued strategy state, if any), ``clients.safetensors`` (personalised
strategies: each client's own state, keys ``<client>/<tensor>``), ``merged.safetensors`` (stacked LoRA
aggregation: every round's stacked pairs, keys ``<round>/<A key>/B|A``) and ``state.json`` (round, non-tensor
strategy state, RNG scheme). A checkpoint is written to a temporary directory and renamed into place,
so an interrupted write never leaves a partial checkpoint that resume would trust.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedpeft.tensors import TensorDict

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    round: int
    global_state: TensorDict
    strategy_state: dict[str, Any]
    extra: dict[str, Any]
    client_states: dict[int, TensorDict] = field(default_factory=dict)
    merged: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    """``lora_aggregation=stack``: round -> LoRA A key -> the stacked (B, A) merged into the base so far."""


def _split_tensors(state: dict[str, Any]) -> tuple[TensorDict, dict[str, Any]]:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return tensors, {k: v for k, v in state.items() if k not in tensors}


def save_checkpoint(run_dir: Path, ckpt: Checkpoint, keep: int) -> Path:
    root = run_dir / CHECKPOINT_DIR
    final = root / f"round-{ckpt.round:04d}"
    tmp = root / f".round-{ckpt.round:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in ckpt.global_state.items()}, str(tmp / "global.safetensors"))
    strategy_tensors, strategy_rest = _split_tensors(ckpt.strategy_state)
    if strategy_tensors:
        save_file({k: v.contiguous() for k, v in strategy_tensors.items()}, str(tmp / "strategy.safetensors"))
    if ckpt.client_states:
        flat = {f"{cid}/{k}": v.contiguous() for cid, state in ckpt.client_states.items() for k, v in state.items()}
        save_file(flat, str(tmp / "clients.safetensors"))
    if ckpt.merged:
        flat = {k: v.contiguous() for k, v in flatten_merged(ckpt.merged).items()}
        save_file(flat, str(tmp / "merged.safetensors"))
    meta = {"format": FORMAT_VERSION, "round": ckpt.round, "strategy": strategy_rest, **ckpt.extra}
    (tmp / "state.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / CHECKPOINT_DIR
    if not root.exists():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("round-") and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("round-")))  # round-10000 after round-9999


def load_checkpoint(path: Path) -> Checkpoint:
    meta = json.loads((path / "state.json").read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')} is not {FORMAT_VERSION}")
    strategy = dict(meta.pop("strategy"))
    if (path / "strategy.safetensors").exists():
        strategy.update(load_file(str(path / "strategy.safetensors")))
    clients: dict[int, TensorDict] = {}
    if (path / "clients.safetensors").exists():
        for key, tensor in load_file(str(path / "clients.safetensors")).items():
            cid, name = key.split("/", 1)
            clients.setdefault(int(cid), {})[name] = tensor
    merged = {}
    if (path / "merged.safetensors").exists():
        merged = unflatten_merged(load_file(str(path / "merged.safetensors")))
    rnd = meta.pop("round")
    meta.pop("format")
    return Checkpoint(
        round=rnd,
        global_state=load_file(str(path / "global.safetensors")),
        strategy_state=strategy,
        extra=meta,
        client_states=clients,
        merged=merged,
    )


def flatten_merged(merged: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> TensorDict:
    return {
        f"{rnd}/{key}/{part}": t
        for rnd, pairs in merged.items()
        for key, ba in pairs.items()
        for part, t in zip("BA", ba, strict=True)
    }


def unflatten_merged(flat: TensorDict) -> dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    parts: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for name, tensor in flat.items():
        rnd, rest = name.split("/", 1)
        key, part = rest.rsplit("/", 1)
        parts.setdefault(int(rnd), {}).setdefault(key, {})[part] = tensor
    return {rnd: {k: (p["B"], p["A"]) for k, p in pairs.items()} for rnd, pairs in sorted(parts.items())}
