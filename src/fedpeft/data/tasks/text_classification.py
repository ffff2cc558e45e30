"""``text_classification`` (GLUE CoLA, SST-2): sentence -> label on a classification head; MCC and
accuracy. No stdlib version: its rows come from a labelled dataset (``data.source`` with the cola or
sst2 schema)."""

from __future__ import annotations

from fedpeft.data.tasks.base import Task, register_task
from fedpeft.data.tasks.common import tokenize_labelled

TEXT_CLASSIFICATION = register_task(
    Task(
        name="text_classification",
        summary="sentence -> label (CoLA, SST-2), MCC and accuracy",
        head="sequence_classification",
        tokenize=tokenize_labelled,
        num_labels=2,
    )
)
