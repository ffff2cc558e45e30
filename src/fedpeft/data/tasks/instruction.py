"""``instruction`` (S4's setting with code in place of Dolly): prompt = the Alpaca template around
"signature + docstring", response = the body. Sources: the stdlib corpus, dolly, guanaco-commits."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
from fedpeft.data.tasks.base import Task, register_task
from fedpeft.data.tasks.common import TextPair, format_prompt, tokenize_rows


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


INSTRUCTION = register_task(
    Task(
        name="instruction",
        summary="signature + docstring -> body (Alpaca template)",
        head="causal_lm",
        tokenize=tokenize_rows,
        corpus_rows=instruction_rows,
    )
)
