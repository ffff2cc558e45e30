"""``defect-yesno`` and ``clone-yesno``: the defect and clone tasks asked as YES/NO questions (Astraios).

Astraios evaluates its defect and clone detection models generatively: the model is asked "Is there a bug in
the following code?" or whether two snippets are semantically equivalent, and its answer is read as YES or
NO (:func:`~fedpeft.evaluation.suites.base.answer_of`). Here the code comes from the held-out (``test``)
split of the stdlib corpus, built by the data layer's own task builders (``defect_rows``, ``clone_rows``),
so every gold answer is the label the ``defect``/``clone`` classification tasks train and score with.

Notable choices:
- Balanced: the larger class is subsampled (seeded, without replacement) to the size of the smaller, so
  always answering YES (or NO) scores exactly 0.5; the order is then a seeded shuffle, so ``limit`` takes a
  mixed subset. Each seed gives its own subset and order; the same seed always the same.
- ``prompt`` (the ``plain`` format, for base models) is the question, the code in Markdown fences, and
  ``Answer:``; ``instruction`` is the question with the code. The instruction formats show only the
  instruction (the code is not repeated after the template): :meth:`YesNoSuite.solve` formats them with an
  empty code prompt.
- An answer ends at the first blank line (or a new ``Question:``/``###`` turn): a YES/NO and a sentence of
  reasons, which is all :func:`answer_of` reads.
- The held-out records and the unbalanced problems are built once per process (``functools.cache``); each
  ``problems(seed)`` call only balances and shuffles them.
- Task ids: ``defect-yesno/<qualified name>`` (one example per function); a clone pair is named by its
  module and a digest of its two snippets, since the clone builder does not say which function anchored it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np

from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split, load_stdlib_corpus
from fedpeft.data.tasks.clone import clone_rows
from fedpeft.data.tasks.common import LabelledText
from fedpeft.data.tasks.defect import defect_rows
from fedpeft.evaluation.suites import SUITES
from fedpeft.evaluation.suites.base import Ask, Problem, RunSettings, Suite

SPLIT = "test"
YESNO_STOP = ("\n\n", "\nQuestion:", "\n###")
DEFECT_QUESTION = "Is there a bug in the following code? Answer Yes or No."
CLONE_QUESTION = "Are the following two code snippets semantically equivalent (clones)? Answer Yes or No."


def fenced(code: str) -> str:
    """``code`` in a Markdown ``python`` fence."""
    return f"```python\n{code.strip()}\n```"


def yesno_problem(task_id: str, question: str, code: str, answer: bool, meta: dict[str, str]) -> Problem:
    """A YES/NO problem: ``code`` (already fenced and labelled) after ``question``; ``answer`` is gold."""
    instruction = f"{question}\n\n{code}"
    return Problem(
        task_id=task_id,
        prompt=f"{instruction}\n\nAnswer:",
        instruction=instruction,
        join="whole",
        canonical="Yes" if answer else "No",
        stop=YESNO_STOP,
        answer=answer,
        meta=meta,
    )


def unique_id(task_id: str, seen: dict[str, int]) -> str:
    """``task_id``, or ``task_id#n`` for its n-th use (a property's getter and setter share a name)."""
    seen[task_id] = seen.get(task_id, 0) + 1
    return task_id if seen[task_id] == 1 else f"{task_id}#{seen[task_id]}"


def balanced(items: Sequence[tuple[Problem, int]], seed: int) -> list[Problem]:
    """As many positives as negatives (the larger class subsampled without replacement), in a seeded shuffle."""
    rng = np.random.default_rng(seed)
    positives = [p for p, label in items if label]
    negatives = [p for p, label in items if not label]
    size = min(len(positives), len(negatives))
    kept = [group[i] for group in (positives, negatives) for i in sorted(rng.choice(len(group), size, replace=False))]
    return [kept[i] for i in rng.permutation(len(kept))]


@functools.cache
def held_out_records() -> tuple[FunctionRecord, ...]:
    """The stdlib corpus's held-out (``test``) split, in corpus order (read once per process)."""
    return tuple(rec for rec in load_stdlib_corpus() if corpus_split(rec) == SPLIT)


@functools.cache
def defect_items() -> tuple[tuple[Problem, int], ...]:
    """One problem per held-out function a bug can be injected into, with the defect task's label."""
    items: list[tuple[Problem, int]] = []
    seen: dict[str, int] = {}
    for rec in held_out_records():
        rows = defect_rows([rec])  # seeded by the function's name: the same row the task builds
        for row in rows:
            items.append(
                (
                    yesno_problem(
                        unique_id(f"defect-yesno/{rec.qualname}", seen),
                        DEFECT_QUESTION,
                        fenced(row.text),
                        bool(row.label),
                        {"module": row.category, "kind": row.kind, "code": row.text},
                    ),
                    row.label,
                )
            )
    return tuple(items)


def clone_pair_id(row: LabelledText) -> str:
    """A pair's task id: its module and a digest of its two snippets (stable across runs and machines)."""
    digest = hashlib.sha1(f"{row.text}\0{row.text_b}".encode()).hexdigest()[:12]
    return f"clone-yesno/{row.category}/{digest}"


@functools.cache
def clone_items() -> tuple[tuple[Problem, int], ...]:
    """One problem per held-out clone-task pair, with the clone task's label."""
    items: list[tuple[Problem, int]] = []
    seen: dict[str, int] = {}
    for row in clone_rows(held_out_records()):
        code = f"Snippet 1:\n{fenced(row.text)}\n\nSnippet 2:\n{fenced(row.text_b)}"
        problem = yesno_problem(
            unique_id(clone_pair_id(row), seen),
            CLONE_QUESTION,
            code,
            bool(row.label),
            {"module": row.category, "kind": row.kind, "code": row.text, "code_b": row.text_b},
        )
        items.append((problem, row.label))
    return tuple(items)


class YesNoSuite(Suite):
    """A YES/NO question per problem, scored by accuracy of the answer read from the completion."""

    scoring: ClassVar[Literal["execution", "yesno"]] = "yesno"

    def solve(self, problems: Sequence[Problem], ask: Ask, run: RunSettings) -> list[tuple[str, list[str]]]:
        if run.prompt_format == "plain":
            return super().solve(problems, ask, run)
        return super().solve([dataclasses.replace(p, prompt="") for p in problems], ask, run)


@SUITES.register("defect-yesno")
class DefectYesNo(YesNoSuite):
    """Held-out stdlib functions, clean or with an injected bug: "Is there a bug in the following code?" (YES/NO)."""

    def problems(self, seed: int) -> list[Problem]:
        return balanced(defect_items(), seed)


@SUITES.register("clone-yesno")
class CloneYesNo(YesNoSuite):
    """Held-out stdlib function pairs: "Are the following two code snippets semantically equivalent?" (YES/NO)."""

    def problems(self, seed: int) -> list[Problem]:
        return balanced(clone_items(), seed)
