"""Turn tokenized examples into padded batches (named tensors) for causal language modelling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: tuple[int, ...]
    prompt_len: int
    """Number of leading prompt tokens; the rest is the response."""
    category: str = ""
    label: int = -1
    """Class id for classification tasks (-1: none)."""
    reference: str = ""
    """The untruncated response text, for scoring generations (a cut reference would favour short output)."""


def collate_causal_lm(examples: Sequence[TokenizedExample], pad_id: int, mask_prompt: bool) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. Labels are the input ids with padding (and, when
    ``mask_prompt``, the prompt) set to -100; the model shifts them itself for next-token loss."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        row = torch.tensor(e.input_ids, dtype=torch.long)
        ids[i, :n] = row
        mask[i, :n] = 1
        start = e.prompt_len if mask_prompt else 0
        labels[i, start:n] = row[start:]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: example indices grouped into rows of at most ``capacity`` tokens (an example
    longer than ``capacity`` gets a row of its own). Deterministic: ties keep their input order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if slot is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows


def collate_packed_causal_lm(
    examples: Sequence[TokenizedExample], pad_id: int, mask_prompt: bool, capacity: int
) -> dict[str, torch.Tensor]:
    """Like :func:`collate_causal_lm`, but several examples share a row (first-fit decreasing into rows of
    ``capacity`` tokens) instead of each padding to the longest. There is no attention mask: positions
    restart at 0 for every document, and transformers' masking turns such position ids into a
    block-diagonal causal mask, so no token attends across documents. A document's first label is -100 (it
    would be predicted from the previous document's last token). The tokens that carry loss, and so the
    loss of a step, are the same as unpacked."""
    rows = pack_rows([len(e.input_ids) for e in examples], capacity)
    width = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            e = examples[i]
            n = len(e.input_ids)
            tokens = torch.tensor(e.input_ids, dtype=torch.long)
            ids[r, at : at + n] = tokens
            positions[r, at : at + n] = torch.arange(n)
            start = max(e.prompt_len if mask_prompt else 0, 1)
            labels[r, at + start : at + n] = tokens[start:]
            at += n
        positions[r, at:] = torch.arange(width - at)  # trailing padding: a document of its own, unscored
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def collate_seq2seq(
    examples: Sequence[TokenizedExample], pad_id: int, mask_prompt: bool = True
) -> dict[str, torch.Tensor]:
    """Encoder-decoder batches: the prompt is the encoder input, the response the decoder's labels
    (padding -100; the model builds its decoder inputs by shifting them right). The prompt is never a
    target here, so ``mask_prompt`` has nothing to mask."""
    ids, mask = pad_sequences([e.input_ids[: e.prompt_len] for e in examples], pad_id)
    targets, target_mask = pad_sequences([e.input_ids[e.prompt_len :] for e in examples], pad_id)
    return {"input_ids": ids, "attention_mask": mask, "labels": targets.masked_fill(target_mask == 0, IGNORE_INDEX)}


def count_target_tokens(labels: torch.Tensor) -> int:
    """Tokens that carry loss after the next-token shift (the first position never does)."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def collate_classification(
    examples: Sequence[TokenizedExample], pad_id: int, mask_prompt: bool = False
) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example; labels are the class ids (one per example)."""
    ids, mask = pad_sequences([e.input_ids for e in examples], pad_id)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    if (labels < 0).any():
        raise ValueError("classification batch has examples without a label")
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def collate_query_code(
    examples: Sequence[TokenizedExample], pad_id: int, mask_prompt: bool = True
) -> dict[str, torch.Tensor]:
    """Retrieval pairs: each example holds the query (its first ``prompt_len`` tokens) and the code (the
    rest); they are padded into two separate batches, row i of one matching row i of the other."""
    query_ids, query_mask = pad_sequences([e.input_ids[: e.prompt_len] for e in examples], pad_id)
    code_ids, code_mask = pad_sequences([e.input_ids[e.prompt_len :] for e in examples], pad_id)
    return {"query_ids": query_ids, "query_mask": query_mask, "code_ids": code_ids, "code_mask": code_mask}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-length mean of the hidden states over the unmasked positions."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)
