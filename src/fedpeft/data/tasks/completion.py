"""``completion`` (CodeXGLUE code completion): no prompt, response = the whole function; scored by
next-token accuracy ignoring special and padding tokens, and perplexity."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
from fedpeft.data.tasks.base import Task, register_task
from fedpeft.data.tasks.common import TextPair, tokenize_rows


def completion_rows(records: Sequence[FunctionRecord], template: str) -> list[TextPair]:
    return [TextPair(prompt="", response=rec.code, category=rec.module, split=corpus_split(rec)) for rec in records]


COMPLETION = register_task(
    Task(
        name="completion",
        summary="whole functions, token accuracy ignoring special tokens",
        head="causal_lm",
        tokenize=tokenize_rows,
        corpus_rows=completion_rows,
        score_special_tokens=False,
        has_prompt=False,
    )
)
