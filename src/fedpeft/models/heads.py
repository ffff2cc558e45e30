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

from fedpeft.tensors.batching import IGNORE_INDEX, TokenizedExample, collate_packed_causal_lm, mean_pool


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], head: str, **forward_kwargs):
    """(model output, logits, targets) with logits[..., t, :] scoring targets[..., t]."""
    # A packed batch has position ids (restarting per document) in place of an attention mask; the mask
    # builder reads them only without a key/value cache.
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if "position_ids" in batch:
        inputs["use_cache"] = False
    inputs.update(forward_kwargs)
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


@torch.no_grad()
def check_packing_isolates(model: torch.nn.Module, pad_id: int) -> None:
    """``train.packing`` needs the model to turn position ids that restart at 0 into a block-diagonal causal
    mask (transformers does for models that build their masks with ``create_causal_mask``, Llama and GPT-2
    among them). Checked on two short documents: packed, each must get the logits it gets alone."""
    docs = [TokenizedExample(tuple(range(3, 8)), 0), TokenizedExample(tuple(range(10, 14)), 0)]
    packed = collate_packed_causal_lm(docs, pad_id, mask_prompt=False, capacity=9)  # one row: doc 0, doc 1
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        together = (
            model(
                input_ids=packed["input_ids"].to(device),
                position_ids=packed["position_ids"].to(device),
                use_cache=False,
            )
            .logits[0]
            .float()
        )
        alone = [model(input_ids=torch.tensor([d.input_ids], device=device)).logits[0].float() for d in docs]
    finally:
        model.train(was_training)
    worst = (together - torch.cat(alone)).abs().max() / together.abs().max().clamp_min(1e-6)
    if worst > 1e-2:
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        raise ValueError(
            f"train.packing: model type {model_type!r} lets packed documents attend to each other (it does not "
            f"build its attention mask from restarting position ids; relative logit change {float(worst):.3g}); "
            "set train.packing false"
        )
