"""What each model head predicts, aligned with its targets, shared by training (``fl.client_round``) and
evaluation (``evaluation.metrics``) so the two cannot disagree about which logit scores which token.

- ``causal_lm``: position t predicts token t+1 (labels are the input ids, shifted here).
- ``seq2seq_lm``: decoder position t predicts label t (the model shifts the labels into decoder inputs).
- ``embedding``: unit-length mean of the last hidden states over the unmasked positions.
"""

from __future__ import annotations

import torch

from fedpeft.tensors.batching import mean_pool


def token_logits_and_targets(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], head: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) with logits[..., t, :] scoring targets[..., t]; -100 targets carry no loss."""
    if head == "seq2seq_lm":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        return out.logits, batch["labels"]
    if head == "causal_lm":
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, :-1], batch["labels"][:, 1:]
    raise ValueError(f"head {head!r} does not predict tokens")


def embed(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
