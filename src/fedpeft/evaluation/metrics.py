"""Language-model metrics on tokenized examples: loss, perplexity and next-token accuracy.

Evaluation always scores the response tokens only (the prompt is masked whatever
``data.train_on_inputs`` says), so runs that differ in that setting stay comparable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fedpeft.tensors.batching import IGNORE_INDEX, TokenizedExample, collate_causal_lm


@torch.no_grad()
def evaluate_causal_lm(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    unscored_token_ids: Sequence[int] = (),
) -> dict[str, float]:
    """Token-weighted mean loss, its perplexity and token accuracy (argmax == target) over ``examples``.

    Targets in ``unscored_token_ids`` (e.g. special tokens, as CodeXGLUE's completion metric requires)
    count in neither loss nor accuracy."""
    if not examples:
        raise ValueError("cannot evaluate on an empty split")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, correct, tokens = 0.0, 0, 0
    # Sorting by length keeps padding small; the metrics do not depend on order.
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    for i in range(0, len(ordered), batch_size):
        batch = collate_causal_lm(ordered[i : i + batch_size], pad_id, mask_prompt=True)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        for token_id in unscored_token_ids:
            keep &= targets != token_id
        loss_sum += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
        correct += int((logits.argmax(-1)[keep] == targets[keep]).sum())
        tokens += int(keep.sum())
    model.train(was_training)
    loss = loss_sum / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": correct / max(tokens, 1),
        "tokens": tokens,
    }
