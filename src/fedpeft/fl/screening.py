"""Which client updates a round may aggregate.

A federated round cannot trust what comes back: a node may crash, time out, or send a state that does not
fit the model (another run's adapter, a truncated tensor) or that diverged (NaN, inf). One such update
would poison the global adapter of every client. The round loop therefore screens each update against the
state the client was sent, drops the ones that fail with a logged reason, and aggregates the rest when at
least ``fl.min_clients`` remain; otherwise the round fails with every client's reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedpeft.errors import FedpeftError
from fedpeft.tensors import TensorDict


class TooFewUpdatesError(FedpeftError, RuntimeError):
    """Fewer usable updates than ``fl.min_clients`` in a round; the run stops after its last complete round."""


def update_problem(state: TensorDict, sent: TensorDict) -> str | None:
    """Why ``state`` (a client's returned trainable state) cannot be aggregated with the others, or None.

    It must hold exactly the tensors the client was sent, each of the same shape, all finite."""
    missing, extra = sorted(sent.keys() - state.keys()), sorted(state.keys() - sent.keys())
    if missing or extra:
        parts = [f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}" if missing else ""]
        parts.append(f"unexpected {extra[:3]}{' ...' if len(extra) > 3 else ''}" if extra else "")
        return "tensor names differ from the adapter's: " + ", ".join(p for p in parts if p)
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(sent[name].shape):
            return f"{name} has shape {tuple(tensor.shape)}, the adapter's is {tuple(sent[name].shape)}"
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            return f"{name} has {bad} non-finite value(s) (NaN or inf)"
    return None


def check_enough_updates(server_round: int, usable: int, min_clients: int, failed: Mapping[int, str]) -> None:
    """Raise :class:`TooFewUpdatesError` naming each failed client's reason when fewer than ``min_clients``
    updates are usable."""
    if usable >= min_clients:
        return
    reasons = "; ".join(f"client {cid}: {why}" for cid, why in sorted(failed.items()))
    raise TooFewUpdatesError(
        f"round {server_round}: {usable} usable client update(s), fewer than fl.min_clients={min_clients}"
        + (f" ({reasons})" if reasons else "")
    )
