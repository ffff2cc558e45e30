"""Causal language-model tasks built from the stdlib corpus: rows of (prompt, response) text, and their
tokenization with the prompt boundary kept exact.

- ``instruction`` (S4's setting with code in place of Dolly): prompt = the Alpaca template around
  "signature + docstring", response = the body.
- ``completion`` (CodeXGLUE code completion): no prompt, response = the whole function; scored by
  next-token accuracy ignoring special and padding tokens, and perplexity.

The category of every row is its top-level module (the natural client id); its split is the source
function's corpus split.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
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


def format_prompt(instruction: str, template: str = "alpaca") -> str:
    if template != "alpaca":
        raise ValueError(f"unknown template {template!r}; valid: alpaca")
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def instruction_rows(records: Sequence[FunctionRecord], template: str) -> list[TextPair]:
    return [
        TextPair(
            prompt=format_prompt(
                f"Write the body of this Python function from the `{rec.module}` module.\n\n"
                f'{rec.signature}\n"""{rec.docstring}"""',
                template,
            ),
            response=rec.body,
            category=rec.module,
            split=corpus_split(rec),
        )
        for rec in records
    ]


def completion_rows(records: Sequence[FunctionRecord], template: str) -> list[TextPair]:
    return [TextPair(prompt="", response=rec.code, category=rec.module, split=corpus_split(rec)) for rec in records]


TEXT_TASKS: dict[str, Callable[[Sequence[FunctionRecord], str], list[TextPair]]] = {
    "instruction": instruction_rows,
    "completion": completion_rows,
}
SCORE_SPECIAL_TOKENS = {"instruction": True, "completion": False}
"""Whether a task's token accuracy counts special tokens (end-of-sequence): CodeXGLUE's completion
metric ignores them; for instructions, knowing where to stop is part of the answer."""


def rows_for_task(task: str, records: Sequence[FunctionRecord], template: str) -> list[TextPair]:
    if task not in TEXT_TASKS:
        raise ValueError(f"unknown data.task {task!r}; valid: {', '.join(TEXT_TASKS)}")
    return TEXT_TASKS[task](records, template)


def tokenize_rows(rows: Sequence[TextPair], tokenizer, max_length: int) -> tuple[list[TokenizedExample], int]:
    """Tokenize prompt and response separately (so the prompt boundary is exact), append EOS and cut at
    ``max_length``. Rows whose prompt leaves fewer than 8 response tokens are dropped: they would train
    on nothing. Returns the examples and how many rows were dropped."""
    prompts = tokenizer([r.prompt for r in rows], add_special_tokens=False)["input_ids"]
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
