"""What every task shares: the two row kinds (prompt/response pairs and labelled texts), the prompt
template, and the tokenization of each row kind.

Notable choices:
- ``TokenizedExample`` (``fedpeft.tensors.batching``, which imports torch) is imported inside the
  tokenizers, so the configuration can import the task registry to validate ``data.task`` without
  loading torch.
- Prompt and response are tokenized separately, so the prompt boundary is exact; labelled texts are
  dropped rather than cut when too long, since the evidence for the label may sit in the cut part.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedpeft.data.stdlib_corpus import FunctionRecord

if TYPE_CHECKING:
    from fedpeft.tensors.batching import TokenizedExample

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
MIN_RESPONSE_TOKENS = 8


@dataclass(frozen=True)
class TextPair:
    prompt: str
    response: str
    category: str
    split: str = "train"
    """The source function's corpus split: 'test' rows are never seen by the pretrained built-in model."""


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int
    category: str
    split: str = "train"
    kind: str = ""
    """What produced the label (for defects: the mutation, or 'clean')."""
    text_b: str = ""
    """Second text of a pair task (clone detection); empty for single-text tasks."""


TEMPLATES = ("alpaca", "question-answer")
"""Prompt templates: alpaca (Shepherd/FedIT) and question-answer (Astraios' ``Question: ...\n\nAnswer:``, with
the answer on its own line as its evaluation prompts put code)."""


def format_prompt(instruction: str, template: str = "alpaca") -> str:
    if template == "alpaca":
        return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    if template == "question-answer":
        return f"Question: {instruction}\n\nAnswer:\n"
    raise ValueError(f"unknown template {template!r}; valid: {', '.join(TEMPLATES)}")


def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    end = re.search(r"(?<=[.!?])\s+(?=[A-Z])", paragraph)  # "e.g. words" does not end a sentence
    return paragraph[: end.start()] if end else paragraph


def code_without_docstring(rec: FunctionRecord) -> str:
    """A function's signature and body, its docstring left out."""
    return rec.signature + "\n" + textwrap.indent(rec.body, "    ")


def boundary_tokens(tokenizer: Any) -> tuple[list[int], int]:
    """(start tokens, end token) for a sequence: BOS/EOS for decoders, CLS/SEP for BERT-style encoders,
    whose classifier reads the first position."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither an EOS nor a SEP token to end sequences")
    return ([start] if start is not None else []), end


def tokenize_rows(rows: Sequence[TextPair], tokenizer: Any, max_length: int) -> tuple[list[TokenizedExample], int]:
    """Tokenize prompt and response separately (so the prompt boundary is exact), append EOS and cut at
    ``max_length``. Rows whose prompt leaves fewer than 8 response tokens are dropped: they would train
    on nothing. Returns the examples and how many rows were dropped."""
    from fedpeft.tensors.batching import TokenizedExample

    prompts = tokenizer([r.prompt for r in rows], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r.response for r in rows], add_special_tokens=False)["input_ids"]
    bos, eos = boundary_tokens(tokenizer)
    out, dropped = [], 0
    for row, p, r in zip(rows, prompts, responses, strict=True):
        prompt = bos + p
        if len(prompt) + MIN_RESPONSE_TOKENS > max_length:
            dropped += 1
            continue
        ids = (prompt + r + [eos])[:max_length]
        out.append(TokenizedExample(tuple(ids), prompt_len=len(prompt), category=row.category, reference=row.response))
    return out, dropped


def tokenize_labelled(
    rows: Sequence[LabelledText], tokenizer: Any, max_length: int
) -> tuple[list[TokenizedExample], int]:
    """BOS + text + EOS; rows longer than ``max_length`` are dropped, not cut, since the evidence for the
    label (an injected bug) may sit in the part that would be cut. Returns the examples and the drop count."""
    from fedpeft.tensors.batching import TokenizedExample

    ids = tokenizer([r.text for r in rows], add_special_tokens=False)["input_ids"]
    ids_b = tokenizer([r.text_b for r in rows], add_special_tokens=False)["input_ids"]
    bos, end = boundary_tokens(tokenizer)
    eos = [end]
    out = []
    for row, tokens, tokens_b in zip(rows, ids, ids_b, strict=True):
        full = bos + tokens + eos + (tokens_b + eos if row.text_b else [])
        if len(full) <= max_length:
            out.append(TokenizedExample(tuple(full), prompt_len=0, category=row.category, label=row.label))
    return out, len(rows) - len(out)


def tokenize_task_rows(rows: Sequence[Any], tokenizer: Any, max_length: int) -> tuple[list[TokenizedExample], int]:
    """Tokenize rows of either kind (prompt/response pairs or labelled texts)."""
    if rows and isinstance(rows[0], LabelledText):
        return tokenize_labelled(rows, tokenizer, max_length)
    return tokenize_rows(rows, tokenizer, max_length)
