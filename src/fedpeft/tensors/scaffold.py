"""SCAFFOLD's control variates (Karimireddy et al., 2020) as pure functions.

The server's variate c and each client's c_i are float64 dicts keyed like the trainable state; an empty
dict stands for zeros (a client that has not trained yet, the first round). Client i's new variate is
option II of the paper, c_i+ = c_i - c + (x - y_i) * scale, with ``scale`` = 1 / (the sum of the learning
rates of its local steps); the server's moves by c+ = c + (|S| / N) * mean over the round of (c_i+ - c_i).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch

from fedpeft.tensors.aggregate import TensorDict


class VariateUpdate(NamedTuple):
    c: TensorDict
    """The server's new variate."""
    clients: dict[int, TensorDict]
    """The new variate of every client of the round."""


def zero_variates(like: TensorDict) -> TensorDict:
    """float64 zeros in the shape of every tensor of ``like``."""
    return {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in like.items()}


def drift_correction(like: TensorDict, c: TensorDict, c_i: TensorDict) -> TensorDict:
    """c - c_i for every tensor of ``like``, in float32: what a client adds to each local gradient."""
    c = c or zero_variates(like)
    c_i = c_i or zero_variates(like)
    return {k: (c[k] - c_i[k]).to(torch.float32) for k in like}


def update_control_variates(
    global_state: TensorDict,
    c: TensorDict,
    c_clients: Mapping[int, TensorDict],
    client_steps: Sequence[tuple[int, TensorDict, float]],
    n_clients: int,
) -> VariateUpdate:
    """The variates after a round: ``client_steps`` holds (client id, its returned state y_i, its scale) in
    the round's order; ``c_clients`` the variates before it; ``n_clients`` N, all clients of the run."""
    c = c or zero_variates(global_state)
    delta_c = zero_variates(global_state)
    n = len(client_steps)
    new: dict[int, TensorDict] = {}
    for client_id, y, scale in client_steps:
        c_i = new.get(client_id) or c_clients.get(client_id) or zero_variates(global_state)
        new_c_i = {
            k: c_i[k] - c[k] + (global_state[k].to(torch.float64) - y[k].to(torch.float64)) * scale
            for k in global_state
        }
        for k in delta_c:
            delta_c[k] += (new_c_i[k] - c_i[k]) / n
        new[client_id] = new_c_i
    share = n / max(n_clients, n)
    return VariateUpdate({k: c[k] + share * delta_c[k] for k in c}, new)
