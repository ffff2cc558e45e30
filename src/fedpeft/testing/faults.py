"""Fault drills: make a ClientApp misbehave in chosen client rounds, so that a deployment's fault handling
can be tried before it is needed.

The drill is read from the environment of the process that trains (``FEDPEFT_INJECT_FAULT``, so it reaches
a SuperNode's ClientApp and a simulation's Ray actors alike). :func:`fault_drill` is the ClientApp's fault
hook (``make_client_app(build, fault=fault_drill)``); the entry points pass it, the runtime only calls it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.tensors import TensorDict

FAULT_ENV = "FEDPEFT_INJECT_FAULT"
"""Fault drills: ``KIND:ROUND:CLIENT[,...]`` (``*`` matches any round or client) makes this process's
ClientApp misbehave in those client rounds, so a deployment's fault handling can be tried before it is
needed. KIND: ``raise`` (the ClientApp raises), ``sleep=S`` (replies S seconds late), ``nan`` (the update
holds NaN), ``shape`` (one tensor of the update loses a row)."""

CORRUPTING = ("nan", "shape")
"""The kinds that act on the trained update; the others act before training."""


def injected_fault(server_round: int, client: int) -> str | None:
    """The fault ``FEDPEFT_INJECT_FAULT`` asks of this client round, if any."""
    for item in filter(None, (x.strip() for x in os.environ.get(FAULT_ENV, "").split(","))):
        kind, _, where = item.partition(":")
        rnd, _, cid = where.partition(":")
        if rnd in ("*", str(server_round)) and cid in ("*", str(client)):
            return kind
    return None


def apply_fault(kind: str, state: TensorDict) -> TensorDict:
    """``state`` as the fault drill ``kind`` leaves it (``raise`` and ``sleep`` act before training)."""
    if kind == "raise":
        raise RuntimeError(f"fault drill ({FAULT_ENV}): this client round raises")
    if kind.startswith("sleep="):
        time.sleep(float(kind.removeprefix("sleep=")))
        return state
    name = sorted(state)[0]
    if kind == "nan":
        return state | {name: torch.full_like(state[name], float("nan"))}
    if kind == "shape":
        return state | {name: state[name][1:].clone()}
    raise ValueError(f"{FAULT_ENV}: unknown fault {kind!r}; use raise, sleep=SECONDS, nan or shape")


def fault_drill(
    server_round: int, client: int, start: TensorDict, train: Callable[[TensorDict], ClientUpdate]
) -> ClientUpdate:
    """The ClientApp's fault hook: one client round (``train(start)``) with the drill ``FEDPEFT_INJECT_FAULT``
    asks of it: ``raise`` / ``sleep`` before training, ``nan`` / ``shape`` on the update it sends."""
    fault = injected_fault(server_round, client)
    if fault is None:
        return train(start)
    if fault in CORRUPTING:
        update = train(start)
        return replace(update, state=apply_fault(fault, update.state))
    apply_fault(fault, start)
    return train(start)
