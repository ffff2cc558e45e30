"""The task names of before the task registry, kept for code not yet moved to it: every table here is
derived from :data:`fedpeft.data.tasks.TASKS`, and the row builders and tokenizers are re-exported from
the task modules (``fedpeft.data.tasks.<name>``) and ``fedpeft.data.tasks.common``.

New code asks the registry: ``get_task(name).head``, ``.num_labels``, ``.threshold_on_validation``,
``.score_special_tokens``, ``.generation_metric``, ``.corpus_rows``, ``.tokenize``.
"""

from __future__ import annotations

from fedpeft.data.tasks import TASKS, rows_for_task
from fedpeft.data.tasks.clone import clone_rows
from fedpeft.data.tasks.code_search import code_search_rows
from fedpeft.data.tasks.code_to_text import code_to_text_rows
from fedpeft.data.tasks.common import (
    ALPACA_PREAMBLE,
    MIN_RESPONSE_TOKENS,
    LabelledText,
    TextPair,
    boundary_tokens,
    first_sentence,
    format_prompt,
    tokenize_labelled,
    tokenize_rows,
    tokenize_task_rows,
)
from fedpeft.data.tasks.completion import completion_rows
from fedpeft.data.tasks.defect import defect_rows
from fedpeft.data.tasks.instruction import instruction_rows

TEXT_TASKS = {name: task.corpus_rows for name, task in TASKS.items() if task.corpus_rows is not None}
"""Task -> its row builder over stdlib corpus records (tasks with a stdlib version)."""
TASK_HEADS = {name: task.head for name, task in TASKS.items()}
TASK_NUM_LABELS = {name: task.num_labels for name, task in TASKS.items() if task.num_labels is not None}
THRESHOLD_ON_VALIDATION = {name for name, task in TASKS.items() if task.threshold_on_validation}
SCORE_SPECIAL_TOKENS = {name: task.score_special_tokens for name, task in TASKS.items()}
GENERATION_METRICS = {name: task.generation_metric for name, task in TASKS.items() if task.generation_metric}

__all__ = [
    "ALPACA_PREAMBLE",
    "GENERATION_METRICS",
    "MIN_RESPONSE_TOKENS",
    "SCORE_SPECIAL_TOKENS",
    "TASK_HEADS",
    "TASK_NUM_LABELS",
    "TEXT_TASKS",
    "THRESHOLD_ON_VALIDATION",
    "LabelledText",
    "TextPair",
    "boundary_tokens",
    "clone_rows",
    "code_search_rows",
    "code_to_text_rows",
    "completion_rows",
    "defect_rows",
    "first_sentence",
    "format_prompt",
    "instruction_rows",
    "rows_for_task",
    "tokenize_labelled",
    "tokenize_rows",
    "tokenize_task_rows",
]
