"""Instruction tuning rows built from the stdlib corpus, the prompt template and tokenization.

Instruction = signature + docstring, response = body, category = top-level module (S4's setting with
code in place of Dolly)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
from fedpeft.tensors.batching import TokenizedExample

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
MIN_RESPONSE_TOKENS = 8


@dataclass(frozen=True)
class InstructionRow:
    instruction: str
    response: str
    category: str
    split: str = "train"
    """The source function's corpus split: 'test' rows are never seen by the pretrained built-in model."""


def rows_from_corpus(records: Sequence[FunctionRecord]) -> list[InstructionRow]:
    return [
        InstructionRow(
            instruction=(
                f"Write the body of this Python function from the `{rec.module}` module.\n\n"
                f'{rec.signature}\n"""{rec.docstring}"""'
            ),
            response=rec.body,
            category=rec.module,
            split=corpus_split(rec),
        )
        for rec in records
    ]


def format_prompt(instruction: str, template: str = "alpaca") -> str:
    if template != "alpaca":
        raise ValueError(f"unknown template {template!r}; valid: alpaca")
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def tokenize_rows(
    rows: Sequence[InstructionRow], tokenizer, max_length: int, template: str = "alpaca"
) -> tuple[list[TokenizedExample], int]:
    """Tokenize prompt and response separately (so the prompt boundary is exact), append EOS and cut at
    ``max_length``. Rows whose prompt leaves fewer than 8 response tokens are dropped: they would train
    on nothing. Returns the examples and how many rows were dropped."""
    prompts = tokenizer([format_prompt(r.instruction, template) for r in rows], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r.response for r in rows], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = tokenizer.eos_token_id
    out, dropped = [], 0
    for row, p, r in zip(rows, prompts, responses, strict=True):
        prompt = bos + p
        if len(prompt) + MIN_RESPONSE_TOKENS > max_length:
            dropped += 1
            continue
        ids = (prompt + r + [eos])[:max_length]
        out.append(TokenizedExample(input_ids=tuple(ids), prompt_len=len(prompt), category=row.category))
    return out, dropped
