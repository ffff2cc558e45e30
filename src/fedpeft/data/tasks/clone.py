"""``clone`` (CodeXGLUE clone detection, offline): a pair of functions -> clone or not
(``fedpeft.data.clones``), classified as one sequence; F1 at a threshold chosen on validation."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from fedpeft.data.clones import rewrite_clone
from fedpeft.data.defects import normalize_code, parses
from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
from fedpeft.data.tasks.base import Task, register_task
from fedpeft.data.tasks.common import LabelledText, tokenize_labelled


def clone_rows(records: Sequence[FunctionRecord], template: str = "") -> list[LabelledText]:
    """One pair per function: with a seeded coin, the function and a semantics-preserving rewrite of it
    (label 1) or the function and another function of the same module and corpus split (label 0), so no
    function crosses splits."""
    groups: dict[tuple[str, str], list[FunctionRecord]] = {}
    for rec in records:
        if parses(rec.code):
            groups.setdefault((rec.module, corpus_split(rec)), []).append(rec)
    rows = []
    for (module, split), group in groups.items():
        for rec in group:
            rng = np.random.default_rng(zlib.crc32(rec.qualname.encode()))
            rewrite = rewrite_clone(rec.code, rng)
            if rewrite is None or len(group) < 2:
                continue  # only functions that can be both sides take part, so the coin stays fair
            if rng.random() < 0.5:
                other, label = rewrite, 1
            else:
                partner = group[int(rng.integers(len(group) - 1))]
                partner = partner if partner is not rec else group[-1]
                other, label = normalize_code(partner.code), 0
            original = normalize_code(rec.code)
            a, b = (original, other) if rng.random() < 0.5 else (other, original)
            rows.append(LabelledText(a, label, module, split, "clone" if label else "different", text_b=b))
    return rows


CLONE = register_task(
    Task(
        name="clone",
        summary="function pair -> clone or not, F1 at a validation-chosen threshold",
        head="sequence_classification",
        tokenize=tokenize_labelled,
        corpus_rows=clone_rows,
        num_labels=2,
        threshold_on_validation=True,
    )
)
