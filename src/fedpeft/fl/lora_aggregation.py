"""How LoRA pairs are aggregated (``fl.lora_aggregation``), for any strategy.

Averaging A and B separately (``separate``, what FedIT does) gives mean(B) mean(A), which is not the mean
of the clients' updates mean(B A): the global model is one no client trained. ``product`` lets the
strategy act on each pair's product dW = B A instead (the scaling alpha / r is shared by all clients, so it
cancels), then re-factors the result to the adapter's rank r by truncated SVD: B = U_r S_r, A = V_r^T.
A keeps orthonormal rows, so a zero product (round 0) still leaves B a gradient. The relative Frobenius
residual ||dW - B A|| / ||dW|| of the truncation is returned per pair for the log.

``stack`` (FLoRA, Wang et al., 2024) is exact: the clients' pairs are concatenated, B_s = [w_1 B_1, ..., w_n B_n]
and A_s = [A_1; ...; A_n] with FedAvg's example weights w, so B_s A_s = sum_i w_i B_i A_i whatever the
clients' ranks; the rank grows with every round, so the run merges B_s A_s into the frozen base and starts
the next round from a fresh adapter (see ``experiment.run``). Only strategies whose aggregate is that
weighted mean can stack (``Strategy.stackable``).

Each function takes the run's :class:`ServerContext` as ``context`` and passes it to the strategy; without
one, the strategy uses the context it was bound to (``Strategy.bind``). Figures come back with the result.

Tensors that are not LoRA pairs (classification heads, DoRA magnitudes) are aggregated by the strategy
as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.lora_ranks import ClientRanks
from fedpeft.fl.strategies.base import PersonalisedStrategy, ServerContext, Strategy
from fedpeft.tensors import TensorDict
from fedpeft.tensors.aggregate import mix_states
from fedpeft.tensors.lora import from_product_space, lora_pairs, to_product_space

__all__ = ["aggregate_personalised_round", "aggregate_round", "check_lora_aggregation", "lora_pairs", "stack_round"]

LORA_AGGREGATION_MODES = ("separate", "product", "stack")


def check_lora_aggregation(mode: str, state: TensorDict) -> None:
    if mode not in LORA_AGGREGATION_MODES:
        raise ValueError(f"unknown fl.lora_aggregation {mode!r}; valid: {', '.join(LORA_AGGREGATION_MODES)}")
    if mode in ("product", "stack") and not lora_pairs(state):
        raise ValueError(f"fl.lora_aggregation={mode} needs LoRA adapters, but the trainable state has no LoRA pairs")


def check_stackable(strategy: Strategy) -> None:
    if not strategy.stackable:
        raise ValueError(
            f"fl.lora_aggregation=stack concatenates the clients' adapters with FedAvg's example weights; strategy "
            f"{strategy.name!r} does not aggregate by that weighted mean (stackable: fedavg, fedprox)"
        )


def stack_round(
    strategy: Strategy,
    global_state: TensorDict,
    updates: Sequence[ClientUpdate],
    server_round: int,
    ranks: ClientRanks | None = None,
    context: ServerContext | None = None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], TensorDict, dict[str, float]]:
    """(A key -> (B_s, A_s) stacked over the clients at each one's rank, the other trainable tensors as the
    strategy aggregates them, figures). Products are at the adapter's global scaling."""
    check_stackable(strategy)
    if not updates:
        raise ValueError(f"round {server_round}: no client updates to stack")
    total = float(sum(u.num_examples for u in updates))
    pairs = lora_pairs(global_state)
    stacked = {}
    for a_key, b_key in pairs.values():
        bs, as_ = [], []
        for u in updates:
            r = ranks.rank_of(u.client_id) if ranks else u.state[a_key].shape[0]
            bs.append(u.state[b_key][:, :r].to(torch.float64) * (u.num_examples / total))
            as_.append(u.state[a_key][:r].to(torch.float64))
        stacked[a_key] = (torch.cat(bs, dim=1), torch.cat(as_, dim=0))
    paired = {k for ab in pairs.values() for k in ab}
    rest_global = {k: v for k, v in global_state.items() if k not in paired}
    rest, figures = {}, {}
    if rest_global:
        rest_updates = [replace(u, state={k: u.state[k] for k in rest_global}) for u in updates]
        rest, figures = _aggregate(strategy, rest_global, rest_updates, server_round, context)
    rank = next(iter(stacked.values()))[1].shape[0] if stacked else 0
    return stacked, rest, {"stacked_rank": rank} | figures


def _aggregate(
    strategy: Strategy,
    global_state: TensorDict,
    updates: Sequence[ClientUpdate],
    server_round: int,
    context: ServerContext | None,
) -> tuple[TensorDict, dict[str, float]]:
    result = strategy.aggregate(global_state, updates, server_round, context=context)
    return dict(result), dict(result.figures)


def aggregate_round(
    strategy: Strategy,
    mode: str,
    global_state: TensorDict,
    updates: Sequence[ClientUpdate],
    server_round: int,
    context: ServerContext | None = None,
) -> tuple[TensorDict, dict[str, float]]:
    """The strategy's next global state under LoRA aggregation ``mode``, and figures for the round log. A
    strategy that pools the data (centralised) has one update and nothing to aggregate: any mode is separate."""
    if mode == "separate" or strategy.kind == "pooled":
        return _aggregate(strategy, global_state, updates, server_round, context)
    in_product = [replace(u, state=to_product_space(u.state)) for u in updates]
    new_product, figures = _aggregate(strategy, to_product_space(global_state), in_product, server_round, context)
    new_state, residuals = from_product_space(new_product, global_state)
    return new_state, _residual_figures([residuals]) | figures


def aggregate_personalised_round(
    strategy: PersonalisedStrategy,
    mode: str,
    updates: Sequence[ClientUpdate],
    server_round: int,
    context: ServerContext | None = None,
) -> tuple[list[TensorDict], torch.Tensor, dict[str, float]]:
    """Each updated client's next state (in the order of ``updates``), the row-normalised mixing matrix W and
    figures for the round log. In ``product`` mode the rows of W mix the clients' products B A, and each
    client's mix is re-factored to its rank."""
    mixing = strategy.mixing_weights(updates, server_round, strategy.context_for(context))
    weights = mixing.weights.to(torch.float64) / mixing.weights.to(torch.float64).sum(1, keepdim=True)
    # A client whose row is its own unit vector (local training, warm-up rounds) keeps its update as it is:
    # nothing to mix, and in product mode no re-factoring of factors it trained.
    identity = torch.eye(len(updates), dtype=torch.float64)
    alone = [torch.equal(weights[i], identity[i]) for i in range(len(updates))]
    if all(alone):
        return [u.state for u in updates], weights, dict(mixing.figures)
    product = mode != "separate"
    mixed = mix_states([to_product_space(u.state) if product else u.state for u in updates], weights)
    states, residuals = [], []
    for m, u, own in zip(mixed, updates, alone, strict=True):
        if own or not product:
            states.append(u.state if own else m)
            continue
        state, residual = from_product_space(m, u.state)
        states.append(state)
        residuals.append(residual)
    figures = _residual_figures(residuals) if residuals else {}
    return states, weights, figures | mixing.figures


def _residual_figures(residuals: Sequence[dict[str, float]]) -> dict[str, float]:
    values = [v for r in residuals for v in r.values()]
    return {"lora_residual_max": max(values), "lora_residual_mean": sum(values) / len(values)}
