"""Language-model metrics on tokenized examples: loss, perplexity and next-token accuracy.

Evaluation always scores the response tokens only (the prompt is masked whatever
``data.train_on_inputs`` says), so runs that differ in that setting stay comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from fedpeft.models.heads import embed, scored_outputs, token_logits_and_targets
from fedpeft.tensors.batching import IGNORE_INDEX, TokenizedExample, collate_causal_lm, collate_seq2seq


@contextmanager
def evaluation_mode(model: torch.nn.Module, examples: Sequence) -> Iterator[torch.device]:
    """Eval mode (no dropout) for the block, the model's device to it, and the caller's mode restored."""
    if not examples:
        raise ValueError("cannot evaluate on an empty split")
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_causal_lm(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    unscored_token_ids: Sequence[int] = (),
    head: str = "causal_lm",
) -> dict[str, float]:
    """Token-weighted mean loss, its perplexity and token accuracy (argmax == target) over the response
    tokens of ``examples``, for a causal (``causal_lm``) or encoder-decoder (``seq2seq_lm``) model.

    Targets in ``unscored_token_ids`` (e.g. special tokens, as CodeXGLUE's completion metric requires)
    count in neither loss nor accuracy."""
    collate = collate_seq2seq if head == "seq2seq_lm" else collate_causal_lm
    with evaluation_mode(model, examples) as device:
        loss_sum, correct, tokens = 0.0, 0, 0
        # Sorting by length keeps padding small; the metrics do not depend on order.
        ordered = sorted(examples, key=lambda e: len(e.input_ids))
        for i in range(0, len(ordered), batch_size):
            batch = collate(ordered[i : i + batch_size], pad_id, mask_prompt=True)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits, targets = token_logits_and_targets(model, batch, head)
            logits = logits.float()
            keep = targets != IGNORE_INDEX
            for token_id in unscored_token_ids:
                keep &= targets != token_id
            loss_sum += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            correct += int((logits.argmax(-1)[keep] == targets[keep]).sum())
            tokens += int(keep.sum())
    loss = loss_sum / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "token_accuracy": correct / max(tokens, 1),
        "tokens": tokens,
    }


@torch.no_grad()
def evaluate_generation(
    model, tokenizer, examples: Sequence[TokenizedExample], max_new_tokens: int
) -> dict[str, float]:
    """Greedy-decode each example's response from its prompt and score it against the reference
    response with smoothed BLEU-4. One example at a time, so no padding enters generation. A decoder
    returns prompt + continuation, an encoder-decoder the continuation alone."""
    from fedpeft.evaluation.bleu import corpus_smoothed_bleu

    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))

    with evaluation_mode(model, examples) as device:
        candidates, references = [], []
        for e in examples:
            prompt = torch.tensor([e.input_ids[: e.prompt_len]], device=device)
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            continuation = out[0] if encoder_decoder else out[0, e.prompt_len :]
            candidates.append(tokenizer.decode(continuation, skip_special_tokens=True).strip())
            references.append(
                e.reference or tokenizer.decode(e.input_ids[e.prompt_len :], skip_special_tokens=True).strip()
            )
    return {"bleu": corpus_smoothed_bleu(candidates, references), "generated": len(candidates)}


def classification_scores(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy, F1 (of class 1 for two classes, else macro) and Matthews correlation (multi-class form,
    as GLUE scores CoLA), all from the confusion matrix."""
    confusion = torch.zeros((num_labels, num_labels), dtype=torch.float64)
    for t, p in zip(labels, predictions, strict=True):
        confusion[t, p] += 1
    total = confusion.sum()
    correct = confusion.trace()
    true_counts, pred_counts = confusion.sum(1), confusion.sum(0)
    f1s = []
    for k in range(num_labels):
        tp = confusion[k, k]
        denominator = true_counts[k] + pred_counts[k]
        f1s.append(float(2 * tp / denominator) if denominator > 0 else 0.0)
    cov = correct * total - (pred_counts * true_counts).sum()
    var = (total**2 - (pred_counts**2).sum()) * (total**2 - (true_counts**2).sum())
    return {
        "accuracy": float(correct / total) if total else 0.0,
        "f1": f1s[1] if num_labels == 2 else sum(f1s) / num_labels,
        "mcc": float(cov / var.sqrt()) if var > 0 else 0.0,
    }


@torch.no_grad()
def classifier_outputs(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> tuple[float, list[int], torch.Tensor]:
    """(summed cross-entropy, labels, class probabilities) over ``examples``, in a length-sorted order."""
    from fedpeft.tensors.batching import collate_classification

    with evaluation_mode(model, examples) as device:
        loss_sum, labels, probs = 0.0, [], []
        ordered = sorted(examples, key=lambda e: len(e.input_ids))
        for i in range(0, len(ordered), batch_size):
            batch = {k: v.to(device) for k, v in collate_classification(ordered[i : i + batch_size], pad_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            labels += batch["labels"].tolist()
            probs.append(logits.softmax(-1).cpu())
    return loss_sum, labels, torch.cat(probs)


def best_f1_threshold(labels: Sequence[int], positive_probs: torch.Tensor) -> float:
    """The decision threshold on P(class 1) that maximises F1 on these rows (the smallest on ties)."""
    best_threshold, best_f1 = 0.5, -1.0
    for threshold in sorted(set(positive_probs.tolist())):
        predictions = (positive_probs >= threshold).long().tolist()
        f1 = classification_scores(labels, predictions, 2)["f1"]
        if f1 > best_f1:
            best_threshold, best_f1 = threshold, f1
    return best_threshold


def evaluate_classifier(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    num_labels: int,
    threshold: float | None = None,
) -> dict[str, float]:
    """Mean cross-entropy per example plus :func:`classification_scores` of the predictions: the argmax,
    or, for two classes with a ``threshold``, P(class 1) >= threshold."""
    loss_sum, labels, probs = classifier_outputs(model, examples, batch_size, pad_id)
    if threshold is None:
        predictions = probs.argmax(-1).tolist()
    else:
        predictions = (probs[:, 1] >= threshold).long().tolist()
    scores = {"loss": loss_sum / len(labels), **classification_scores(labels, predictions, num_labels)}
    return scores | {"examples": len(labels)} | ({"threshold": threshold} if threshold is not None else {})


@torch.no_grad()
def output_probabilities(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int, head: str
) -> torch.Tensor:
    """(scored positions x outputs) probabilities in the order of ``examples``: the next-token distribution
    at every response token (causal or seq2seq head) or the class distribution per example. Two models'
    outputs on the same examples line up row by row."""
    from fedpeft.tensors.batching import collate_classification

    if head == "embedding":
        raise ValueError("an embedding model has no output distribution to compare")
    collate = {"seq2seq_lm": collate_seq2seq, "causal_lm": collate_causal_lm}.get(head)
    rows = []
    with evaluation_mode(model, examples) as device:
        for i in range(0, len(examples), batch_size):
            chunk = list(examples[i : i + batch_size])
            batch = collate(chunk, pad_id, mask_prompt=True) if collate else collate_classification(chunk, pad_id)
            logits, _, _ = scored_outputs(model, {k: v.to(device) for k, v in batch.items()}, head)
            rows.append(logits.float().softmax(-1).cpu())
    return torch.cat(rows)


def mean_reciprocal_rank(similarity: torch.Tensor) -> float:
    """MRR of a queries x candidates similarity matrix whose correct candidate for query i is column i;
    ties count against the query (a candidate scoring equal to the correct one ranks above it)."""
    correct = similarity.diagonal().unsqueeze(1)
    ranks = (similarity >= correct).sum(dim=1)  # includes the correct candidate itself
    return float((1.0 / ranks.double()).mean())


@torch.no_grad()
def evaluate_retrieval(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    temperature: float,
    distractors: Sequence[TokenizedExample] = (),
) -> dict[str, float]:
    """Every query of ``examples`` against every code of ``examples`` plus the codes of ``distractors``
    (the candidate pool): MRR, and the contrastive loss over the whole pool."""
    from fedpeft.tensors.batching import pad_sequences

    def embed_all(seqs: list) -> torch.Tensor:
        out = []
        for i in range(0, len(seqs), batch_size):
            ids, mask = (t.to(device) for t in pad_sequences(seqs[i : i + batch_size], pad_id))
            out.append(embed(model, ids, mask))
        return torch.cat(out)

    with evaluation_mode(model, examples) as device:
        queries = embed_all([e.input_ids[: e.prompt_len] for e in examples])
        codes = embed_all([e.input_ids[e.prompt_len :] for e in [*examples, *distractors]])
    similarity = queries @ codes.T
    loss = F.cross_entropy(similarity / temperature, torch.arange(len(similarity), device=similarity.device))
    return {"loss": float(loss), "mrr": mean_reciprocal_rank(similarity), "candidates": similarity.shape[1]}
