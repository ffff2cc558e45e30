"""Round checkpoints with the full federated state.

``checkpoints/round-NNNN/`` holds ``global.safetensors`` (the global trainable state),
``strategy.safetensors`` (tensor-valued strategy state, if any), ``clients.safetensors`` (personalised
strategies: each client's own state, keys ``<client>/<tensor>``), ``merged.safetensors`` (stacked LoRA
aggregation: every round's stacked pairs, keys ``<round>/<A key>/B|A``) and ``state.json`` (round, non-tensor
strategy state, RNG scheme). A checkpoint is written to a temporary directory and renamed into place,
so an interrupted write never leaves a partial checkpoint that resume would trust; one damaged afterwards
(truncated, edited, another run's) is a :class:`CheckpointError` naming the file, found by
:func:`check_checkpoint` from the file headers alone before a resume loads anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedpeft.errors import FedpeftError
from fedpeft.tensors import TensorDict

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
ROUND_DIR = re.compile(r"round-(\d+)")
TENSOR_FILES = ("global.safetensors", "strategy.safetensors", "clients.safetensors", "merged.safetensors")


class CheckpointError(FedpeftError, ValueError):
    """A checkpoint that cannot be read back as written (truncated, edited, another format)."""


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
    """The complete checkpoints (a ``round-N`` directory with its ``state.json``), oldest first."""
    root = run_dir / CHECKPOINT_DIR
    if not root.exists():
        return []
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a directory; a run keeps its round checkpoints there")
    done = [p for p in root.iterdir() if p.is_dir() and ROUND_DIR.fullmatch(p.name) and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name.removeprefix("round-")))  # round-10000 after round-9999


def read_checkpoint_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``: a JSON object of this format whose round is the directory's."""
    where = path / "state.json"
    try:
        meta = json.loads(where.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{where} cannot be read ({type(err).__name__}); the checkpoint is damaged") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where} is not a JSON object; the checkpoint is damaged")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: checkpoint format {meta.get('format')!r} is not {FORMAT_VERSION}")
    expected = int(path.name.removeprefix("round-")) if ROUND_DIR.fullmatch(path.name) else None
    if not isinstance(meta.get("round"), int) or (expected is not None and meta["round"] != expected):
        raise CheckpointError(f"{where}: round {meta.get('round')!r} is not the directory's round {expected}")
    if not isinstance(meta.get("strategy"), dict):
        raise CheckpointError(f"{where}: 'strategy' is not a JSON object; the checkpoint is damaged")
    return meta


def check_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(``state.json``, name -> shape of the global state) of a checkpoint, every tensor file's header
    checked against its size (a truncated file fails here) without reading the tensors."""
    meta = read_checkpoint_meta(path)
    shapes: dict[str, tuple[int, ...]] = {}
    if not (path / "global.safetensors").is_file():
        raise CheckpointError(f"{path / 'global.safetensors'} is missing; the checkpoint is damaged")
    for name in TENSOR_FILES:
        if not (path / name).exists():
            continue
        try:
            with safe_open(str(path / name), "pt") as tensors:
                found = {key: tuple(tensors.get_slice(key).get_shape()) for key in tensors.keys()}
        except Exception as err:  # safetensors' own error type; any failure means the file is damaged
            raise CheckpointError(f"{path / name} cannot be read ({err}); the checkpoint is damaged") from None
        if name == "global.safetensors":
            shapes = found
    return meta, shapes


def _load_tensors(path: Path) -> TensorDict:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors' own error type; any failure means the file is damaged
        raise CheckpointError(f"{path} cannot be read ({err}); the checkpoint is damaged") from None


def load_checkpoint(path: Path) -> Checkpoint:
    meta = read_checkpoint_meta(path)
    strategy = dict(meta.pop("strategy"))
    if (path / "strategy.safetensors").exists():
        strategy.update(_load_tensors(path / "strategy.safetensors"))
    clients: dict[int, TensorDict] = {}
    if (path / "clients.safetensors").exists():
        for key, tensor in _load_tensors(path / "clients.safetensors").items():
            cid, sep, name = key.partition("/")
            if not (sep and cid.isdigit()):
                raise CheckpointError(f"{path / 'clients.safetensors'}: tensor {key!r} is not <client>/<name>")
            clients.setdefault(int(cid), {})[name] = tensor
    merged = {}
    if (path / "merged.safetensors").exists():
        try:
            merged = unflatten_merged(_load_tensors(path / "merged.safetensors"))
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path / 'merged.safetensors'}: unexpected tensor names ({err})") from None
    rnd = meta.pop("round")
    meta.pop("format")
    return Checkpoint(
        round=rnd,
        global_state=_load_tensors(path / "global.safetensors"),
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
