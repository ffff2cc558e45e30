"""``text_classification`` (GLUE CoLA, SST-2): sentence -> label on a classification head; MCC and
accuracy. Its real rows come from a labelled dataset (``data.source`` with the cola or sst2 schema).

Offline (``data.source: stdlib``) it is an acceptability task in CoLA's spirit, built from the corpus: a
docstring's first sentence is acceptable (label 1); the same words in a shuffled order are not (label 0).
Which of the two a function gives is a coin flip seeded by its name, so a function's row does not depend on
which others are loaded; sentences of fewer than four words, or whose shuffle reads the same, are skipped.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
from fedpeft.data.tasks.base import Task, register_task
from fedpeft.data.tasks.common import LabelledText, first_sentence, tokenize_labelled

MIN_WORDS = 4


def acceptability_rows(records: Sequence[FunctionRecord], template: str = "") -> list[LabelledText]:
    """One row per documented function with a first sentence of at least ``MIN_WORDS`` words: the sentence
    (acceptable, 1) or its words shuffled (unacceptable, 0)."""
    rows = []
    for rec in records:
        words = first_sentence(rec.docstring).split()
        if len(words) < MIN_WORDS:
            continue
        rng = np.random.default_rng(zlib.crc32(rec.qualname.encode()))
        acceptable = bool(rng.integers(2))
        if not acceptable:
            shuffled = [words[i] for i in rng.permutation(len(words))]
            if shuffled == words:
                continue
            words = shuffled
        rows.append(LabelledText(" ".join(words), int(acceptable), rec.module, corpus_split(rec)))
    return rows


TEXT_CLASSIFICATION = register_task(
    Task(
        name="text_classification",
        summary="sentence -> label (CoLA, SST-2; offline: docstring sentence vs its shuffle), MCC and accuracy",
        head="sequence_classification",
        tokenize=tokenize_labelled,
        corpus_rows=acceptability_rows,
        num_labels=2,
    )
)
