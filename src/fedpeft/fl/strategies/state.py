"""What a strategy keeps between rounds, flattened for checkpoints and read back: one helper for every
strategy that keeps state.

A strategy's state is a few named fields: plain values (a step count), named tensors (server moments, a
teacher adapter), and named tensors per client (control variates). :func:`pack_state` flattens them into
the mapping ``Strategy.state_dict`` returns, keys ``<field>``, ``<field>/<tensor>`` and
``<field>/<client>/<tensor>`` (the checkpoint writes its tensors to ``strategy.safetensors`` and its plain
values to ``state.json``); :func:`unpack_state` reads such a mapping back into the fields and refuses keys
the strategy does not keep, so another strategy's checkpoint fails on resume instead of loading quietly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def pack_state(**fields: Any) -> dict[str, Any]:
    """One flat mapping from ``fields``, in their order: a mapping of tensors becomes ``<field>/<name>``
    entries, a mapping of client id to tensors ``<field>/<client>/<name>``, anything else stays ``<field>``."""
    flat: dict[str, Any] = {}
    for field, value in fields.items():
        if not isinstance(value, Mapping):
            flat[field] = value
            continue
        for key, item in value.items():
            if isinstance(item, Mapping):
                flat |= {f"{field}/{key}/{name}": tensor for name, tensor in item.items()}
            else:
                flat[f"{field}/{key}"] = item
    return flat


def unpack_state(
    owner: str,
    state: Mapping[str, Any],
    *,
    values: Mapping[str, Any] | None = None,
    tensors: Sequence[str] = (),
    per_client: Sequence[str] = (),
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """The fields of a flat ``state`` written by :func:`pack_state`: each of ``values`` (name -> default when
    absent), each of ``tensors`` (name -> {tensor name: tensor}) and each of ``per_client`` (name -> {client
    id: {tensor name: tensor}}), tensors cast to ``dtype`` if given. A ValueError names keys of none of them."""
    fields: dict[str, Any] = dict(values or {})
    fields |= {name: {} for name in (*tensors, *per_client)}
    unknown = []
    for key, value in state.items():
        field, sep, rest = key.partition("/")
        client, _, name = rest.partition("/")
        if not sep and values and field in values:
            fields[field] = value
        elif sep and field in tensors:
            fields[field][rest] = value if dtype is None else value.to(dtype)
        elif sep and field in per_client and client.isdigit() and name:
            fields[field].setdefault(int(client), {})[name] = value if dtype is None else value.to(dtype)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{owner} checkpoint state has unknown keys {unknown[:5]}")
    return fields
