"""What each model head predicts, aligned with its targets, shared by training (``fl.client_round``) and
evaluation (``evaluation.metrics``) so the two cannot disagree about which logit scores which token.

- ``causal_lm``: position t predicts token t+1 (labels are the input ids, shifted here); positions of
  virtual tokens that prompt tuning prepends score nothing.
- ``seq2seq_lm``: decoder position t predicts label t (the model shifts the labels into decoder inputs).
- ``sequence_classification``: one logit vector per example, scoring its label.
- ``embedding``: unit-length mean of the last hidden states over the unmasked positions.
"""

from __future__ import annotations

import torch

from fedpeft.tensors.batching import IGNORE_INDEX, mean_pool


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], head: str, **forward_kwargs):
    """(model output, logits, targets) with logits[..., t, :] scoring targets[..., t]."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **forward_kwargs}
    if head == "seq2seq_lm":
        out = model(**inputs, labels=batch["labels"])
        return out, out.logits, batch["labels"]
    if head == "causal_lm":
        out = model(**inputs)
        # Prompt and P-tuning prepend virtual tokens to the sequence: only the real positions score tokens.
        logits = out.logits[:, -batch["input_ids"].shape[1] :]
        return out, logits[:, :-1], batch["labels"][:, 1:]
    if head == "sequence_classification":
        out = model(**inputs)
        return out, out.logits, batch["labels"]
    raise ValueError(f"head {head!r} predicts neither tokens nor classes")


def token_logits_and_targets(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], head: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) with logits[..., t, :] scoring targets[..., t]; -100 targets carry no loss."""
    if head not in ("seq2seq_lm", "causal_lm"):
        raise ValueError(f"head {head!r} does not predict tokens")
    _, logits, targets = _forward(model, batch, head)
    return logits, targets


def scored_outputs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], head: str, attentions: bool = False
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """(logits, targets, attention maps) over the scored positions only: one row per response token of a
    token head or per example of a classifier, so distributions of two models line up row by row. The
    attention maps (per layer; the encoder's for an encoder-decoder) need eager attention."""
    out, logits, targets = _forward(model, batch, head, **({"output_attentions": True} if attentions else {}))
    if head != "sequence_classification":
        keep = targets != IGNORE_INDEX
        logits, targets = logits[keep], targets[keep]
    maps = None
    if attentions:
        maps = out.encoder_attentions if head == "seq2seq_lm" else out.attentions
    return logits, targets, maps


def embed(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return mean_pool(hidden[:, -ids.shape[1] :], mask)  # without prompt tuning's virtual positions
