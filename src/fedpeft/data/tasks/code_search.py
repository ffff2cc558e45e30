"""``code_search`` (CodeXGLUE NL code search, offline): docstring sentence -> its function among the
split's other functions; mean-pooled embeddings trained with an in-batch contrastive loss; MRR."""

from __future__ import annotations

from collections.abc import Sequence

from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
from fedpeft.data.tasks.base import Task, register_task
from fedpeft.data.tasks.common import TextPair, code_without_docstring, first_sentence, tokenize_rows


def code_search_rows(records: Sequence[FunctionRecord], template: str = "") -> list[TextPair]:
    """Query = the docstring's first sentence, candidate = the function without its docstring."""
    rows = []
    for rec in records:
        query = first_sentence(rec.docstring)
        if query:
            code = code_without_docstring(rec)
            rows.append(TextPair(prompt=query, response=code, category=rec.module, split=corpus_split(rec)))
    return rows


CODE_SEARCH = register_task(
    Task(
        name="code_search",
        summary="docstring -> function, MRR over the split",
        head="embedding",
        tokenize=tokenize_rows,
        corpus_rows=code_search_rows,
    )
)
