"""``defect`` (CodeXGLUE defect detection, offline): a function, clean or with one injected bug
(``fedpeft.data.defects``) -> label; a sequence-classification head; accuracy, F1 and MCC."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from fedpeft.data.defects import defect_example
from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
from fedpeft.data.tasks.base import Task, register_task
from fedpeft.data.tasks.common import LabelledText, tokenize_labelled


def defect_rows(records: Sequence[FunctionRecord], template: str = "") -> list[LabelledText]:
    """One example per function that a bug can be injected into: clean or buggy by a coin flip seeded
    by the function's name, so a function's example does not depend on which others are loaded."""
    rows = []
    for rec in records:
        rng = np.random.default_rng(zlib.crc32(rec.qualname.encode()))
        example = defect_example(rec.code, rng)
        if example is not None:
            code, label, kind = example
            rows.append(LabelledText(code, label, rec.module, corpus_split(rec), kind))
    return rows


DEFECT = register_task(
    Task(
        name="defect",
        summary="function -> buggy or clean (injected bugs), a classification head",
        head="sequence_classification",
        tokenize=tokenize_labelled,
        corpus_rows=defect_rows,
        num_labels=2,
    )
)
