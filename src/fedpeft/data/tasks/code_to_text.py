"""``code_to_text`` (CodeXGLUE code-to-text): prompt = the function without its docstring, response =
the docstring's first sentence; scored by smoothed BLEU-4 of greedy generations on the test split."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
from fedpeft.data.tasks.base import Task, register_task
from fedpeft.data.tasks.common import TextPair, code_without_docstring, first_sentence, format_prompt, tokenize_rows


def code_to_text_rows(records: Sequence[FunctionRecord], template: str) -> list[TextPair]:
    rows = []
    for rec in records:
        summary = first_sentence(rec.docstring)
        if not summary:
            continue
        code = code_without_docstring(rec)
        prompt = format_prompt(f"Summarise this Python function in one sentence.\n\n{code}", template)
        rows.append(TextPair(prompt=prompt, response=summary, category=rec.module, split=corpus_split(rec)))
    return rows


CODE_TO_TEXT = register_task(
    Task(
        name="code_to_text",
        summary="function -> first docstring sentence, smoothed BLEU-4 (CodeXGLUE)",
        head="causal_lm",
        tokenize=tokenize_rows,
        corpus_rows=code_to_text_rows,
        generation_metric="bleu",
    )
)
