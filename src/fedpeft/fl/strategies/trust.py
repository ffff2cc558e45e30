"""Personalised trust-weighted aggregation (S3): each client keeps its own adapter; after its local steps,
client i's adapter becomes sum_j W[i, j] theta_j over the round's clients, with W recomputed every round.

How W is built (``weights``):
- ``naive``: uniform, W = 1/n (every client gets the plain mean).
- ``static``: from the clients' category distributions D (rows sum to 1): W = D D^T, so clients holding the
  same categories trust each other. Needs data with more than one category.
- ``dynamic``: softmax over the mean (per tensor) cosine similarity of the clients' adapters, times ``scale``;
  LoRA pairs are compared as their products B A (S3 compared A and B, whose factoring is arbitrary).
- ``dynamic-ref``: softmax over -``scale`` * perplexity of model j on client i's validation rows.
- ``dynamic-token``: softmax over -``token_scale`` * the L1 distance between the models' output
  distributions on a shared reference set (the server's public rows), compared on the ``top_tokens``
  outputs that the models jointly rate highest at each position. S3 compared raw top-100 logits; a
  softmax is invariant to a logit offset the raw L1 would count, so probabilities are compared here.
Selection (``select``): ``all``; ``thresh`` drops weights below ``tau`` but each row keeps its two largest
(S3's rule; with ``static`` or ``dynamic-ref`` weights those need not include the client itself);
``top-k`` keeps each row's ``top_k`` largest. Rows are then
normalised. The first ``warmup_rounds`` rounds train locally only (W = identity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies.base import Mixing, PersonalisedStrategy, ServerContext, register_strategy, setting
from fedpeft.tensors.aggregate import drop_below, keep_largest, mean_cosine_similarity, normalise_rows
from fedpeft.tensors.lora import to_product_space

TrustWeights = Literal["naive", "static", "dynamic", "dynamic-ref", "dynamic-token"]


@dataclass(frozen=True)
class TrustSettings:
    weights: TrustWeights = setting("dynamic-ref", "naive, static, dynamic, dynamic-ref or dynamic-token.")
    select: Literal["all", "thresh", "top-k"] = setting("all", "Keep all weights, those >= tau, or the top_k.")
    tau: float = setting(0.1, "select=thresh: weights below tau are dropped (each row keeps its two largest).")
    top_k: int = setting(3, "select=top-k: weights kept per row.")
    warmup_rounds: int = setting(0, "Rounds of local training only (W = identity) before mixing starts.")
    scale: float = setting(1.0, "Softmax sharpness: times cosine (dynamic), times -perplexity (dynamic-ref).")
    token_scale: float = setting(10.0, "dynamic-token: W = softmax(-token_scale * L1 distance).")
    top_tokens: int = setting(100, "dynamic-token: outputs compared per reference position.")
    reference_rows: int = setting(32, "dynamic-token: server rows used as the shared reference set.")

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau < 1.0:
            raise ValueError(f"tau={self.tau} must be in [0, 1)")
        for key in ("top_k", "top_tokens", "reference_rows"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}={getattr(self, key)} must be >= 1")
        if self.warmup_rounds < 0:
            raise ValueError(f"warmup_rounds={self.warmup_rounds} must be >= 0")
        if self.scale <= 0 or self.token_scale <= 0:
            raise ValueError("scale and token_scale must be > 0")


@register_strategy("trust")
class Trust(PersonalisedStrategy):
    """Personalised: each client mixes the round's adapters by trust weights W (S3)."""

    Settings = TrustSettings

    def check_context(self, context: ServerContext) -> None:
        weights = self.settings.weights
        if context.heterogeneous_ranks:
            raise ValueError(
                "fl.strategy=trust mixes the clients' adapters component by component, which clients of different "
                "ranks do not share; it does not take peft.client_ranks (local does)"
            )
        if weights in ("static", "dynamic-ref") and not context.client_rows_on_server:
            needs = "category counts" if weights == "static" else "validation rows"
            raise ValueError(
                f"trust weights={weights} reads each client's {needs} on the server, which a federation whose "
                "clients keep their own files never sends there; use weights=dynamic, dynamic-token or naive"
            )
        if weights == "static":
            categories = {c for counts in context.client_categories.values() for c in counts}
            if len(categories) < 2:
                raise ValueError(
                    f"trust weights=static compares the clients' category distributions, but the data has "
                    f"{len(categories)} category ({sorted(categories)}); use a source with categories or another weights"
                )
        if weights == "dynamic-ref":
            empty = [cid for cid, rows in context.client_val.items() if not rows]
            if empty:
                raise ValueError(
                    f"trust weights=dynamic-ref scores every model on each client's validation rows, but client(s) "
                    f"{empty[:5]} have none; set data.val_fraction > 0"
                )
        if weights == "dynamic-token":
            if not context.server_data:
                raise ValueError(
                    "trust weights=dynamic-token compares the models on a shared reference set, the server's rows; "
                    "set data.server_fraction > 0"
                )
            if context.args.head == "embedding":
                raise ValueError(
                    "trust weights=dynamic-token compares output distributions; an embedding model has none"
                )

    def mixing_weights(
        self, updates: Sequence[ClientUpdate], server_round: int, context: ServerContext | None = None
    ) -> Mixing:
        n = len(updates)
        s = self.settings
        if server_round <= s.warmup_rounds or n == 1:
            return Mixing(torch.eye(n, dtype=torch.float64))
        if s.weights != "naive":
            context = self.require_context(context)
        states = [u.state for u in updates]
        if s.weights == "naive":
            w = torch.ones(n, n, dtype=torch.float64)
        elif s.weights == "static":
            w = self._static(updates, context)
        elif s.weights == "dynamic":
            # On the products B A: a pair's factors depend on how it was factored (SVD in product mode).
            w = torch.softmax(s.scale * mean_cosine_similarity([to_product_space(x) for x in states]), dim=1)
        elif s.weights == "dynamic-ref":
            w = torch.softmax(-s.scale * self._perplexities(updates, context), dim=1)
        else:
            w = torch.softmax(-s.token_scale * self._token_distances(states, context), dim=1)
        if s.select == "thresh":
            w = drop_below(normalise_rows(w), s.tau, keep_at_least=2)
        elif s.select == "top-k":
            w = keep_largest(w, s.top_k)
        return Mixing(normalise_rows(w))

    def _static(self, updates: Sequence[ClientUpdate], context: ServerContext) -> torch.Tensor:
        counts = [context.client_categories[u.client_id] for u in updates]
        names = sorted({c for row in counts for c in row})
        d = torch.tensor([[row.get(c, 0) for c in names] for row in counts], dtype=torch.float64)
        d = d / d.sum(1, keepdim=True)
        return d @ d.T

    def _perplexities(self, updates: Sequence[ClientUpdate], context: ServerContext) -> torch.Tensor:
        """[i, j]: perplexity of client j's model on client i's validation rows."""
        n = len(updates)
        ppl = torch.empty(n, n, dtype=torch.float64)
        for j, model_j in enumerate(updates):
            for i, client_i in enumerate(updates):
                loss = context.loss(model_j.state, context.client_val[client_i.client_id])
                ppl[i, j] = torch.tensor(min(loss, 50.0), dtype=torch.float64).exp()
        return ppl

    def _token_distances(self, states: Sequence[dict[str, torch.Tensor]], context: ServerContext) -> torch.Tensor:
        """[i, j]: mean over reference positions of the L1 distance between the two models' probabilities on
        the positions' jointly top-rated outputs. Two passes keep one full distribution in memory at a time."""
        reference = list(context.server_data[: self.settings.reference_rows])
        mean = None
        for state in states:
            p = context.probabilities(state, reference).to(torch.float64)
            mean = p if mean is None else mean + p
        top = mean.topk(min(self.settings.top_tokens, mean.shape[1]), dim=1).indices
        picked = torch.stack(
            [context.probabilities(state, reference).to(torch.float64).gather(1, top) for state in states]
        )
        return torch.cdist(picked.flatten(1), picked.flatten(1), p=1) / picked.shape[1]
