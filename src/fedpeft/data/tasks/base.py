"""What a task is: a frozen :class:`Task` spec (how rows are built and tokenized, the head, how it is
scored) and ``TASKS``, the registry that every module of this package adds one task to.

Notable choices:
- A task is a value, not a class: everything the run needs to know about it is one of its fields, so
  nothing else keeps a per-task dict (the old ``TASK_HEADS`` & co. are derived from the registry).
- The scoring family and packing support follow from the head: a language-model head predicts tokens
  (packing applies; loss and token accuracy), a classification or embedding head scores whole examples.
- Contradictions (labels on a task without a classifier, a generation metric on one that does not
  generate) are refused when the task is registered, so a mistake shows on import, not mid-run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from fedpeft.data.stdlib_corpus import FunctionRecord
from fedpeft.registry import Registry

if TYPE_CHECKING:
    from fedpeft.tensors.batching import TokenizedExample

Head = Literal["causal_lm", "sequence_classification", "embedding"]
Scoring = Literal["language_model", "classification", "retrieval"]

SCORING_OF_HEAD: dict[str, Scoring] = {
    "causal_lm": "language_model",
    "sequence_classification": "classification",
    "embedding": "retrieval",
}
"""The metric family each head is scored by: loss, token accuracy and perplexity; accuracy, F1 and MCC;
MRR of each query's candidate."""

CorpusRows = Callable[[Sequence[FunctionRecord], str], list[Any]]
"""(stdlib function records, prompt template) -> task rows."""
Tokenize = Callable[[Sequence[Any], Any, int], "tuple[list[TokenizedExample], int]"]
"""(rows, tokenizer, max_length) -> (tokenized examples, rows dropped as too long)."""


@dataclass(frozen=True)
class Task:
    """A task: its rows, its head, its labels and how it is scored."""

    name: str
    summary: str
    """One line: what goes in, what comes out, how it is scored (``fedpeft tasks``, the config's help)."""
    head: Head
    """The model head the task trains: causal_lm (an encoder-decoder base uses its seq2seq head instead),
    sequence_classification or embedding."""
    tokenize: Tokenize
    corpus_rows: CorpusRows | None = None
    """Rows from the built-in stdlib corpus; None: the task needs a labelled dataset (``data.source``)."""
    num_labels: int | None = None
    """Classes of a classification head; None for other heads."""
    threshold_on_validation: bool = False
    """F1 is taken at the decision threshold that maximises F1 on the clients' validation rows (S0 tuned
    it on the evaluation set; we never do)."""
    score_special_tokens: bool = True
    """Token accuracy counts special tokens (end-of-sequence): CodeXGLUE's completion metric ignores them;
    for instructions, knowing where to stop is part of the answer."""
    generation_metric: str | None = None
    """A metric of greedy generations on the test split, besides loss and token accuracy (e.g. bleu)."""
    has_prompt: bool = True
    """Rows have a prompt to condition on (an encoder-decoder base needs one for its encoder)."""

    def __post_init__(self) -> None:
        if self.head not in SCORING_OF_HEAD:
            raise ValueError(f"task {self.name!r}: head {self.head!r} is not one of {', '.join(SCORING_OF_HEAD)}")
        classifier = self.head == "sequence_classification"
        if classifier != (self.num_labels is not None):
            raise ValueError(f"task {self.name!r}: num_labels is set exactly when the head is sequence_classification")
        if self.num_labels is not None and self.num_labels < 2:
            raise ValueError(f"task {self.name!r}: num_labels must be at least 2, got {self.num_labels}")
        if self.threshold_on_validation and not classifier:
            raise ValueError(f"task {self.name!r}: only a classification task chooses a decision threshold")
        if self.generation_metric is not None and self.head != "causal_lm":
            raise ValueError(f"task {self.name!r}: only a causal_lm task is scored on generations")

    @property
    def scoring(self) -> Scoring:
        """The metric family: language_model, classification or retrieval."""
        return SCORING_OF_HEAD[self.head]

    @property
    def supports_packing(self) -> bool:
        """Token-predicting tasks can pack several examples into one row (``train.packing``); the others
        score whole examples."""
        return self.head == "causal_lm"


TASKS: Registry[Task] = Registry("task", "data.task")


def register_task(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS` under its name (a duplicate name is an error)."""
    return TASKS.register(task.name)(task)


def get_task(name: str) -> Task:
    """The task called ``name``; a ValueError naming ``data.task`` and every valid task if none."""
    return TASKS.get(name)


def task_names() -> tuple[str, ...]:
    """Every task's name, in the order the config lists them."""
    return TASKS.names()


def describe_tasks() -> list[tuple[str, str, list[tuple[str, Any, str]]]]:
    """(name, summary, settings) per task, sorted by name: the shape ``Registry.describe`` gives, for
    ``fedpeft tasks``. Tasks take no settings of their own."""
    return [(name, task.summary, []) for name, task in TASKS.items()]


def rows_for_task(task: str, records: Sequence[FunctionRecord], template: str) -> list[Any]:
    """The rows of ``task`` built from stdlib corpus records."""
    spec = TASKS.get(task) if task in TASKS else None
    if spec is None or spec.corpus_rows is None:
        raise ValueError(
            f"data.task={task!r} has no built-in stdlib version; give it a labelled dataset, e.g. "
            f"--set data.source=nyu-mll/glue/cola or a local file with data.schema=cola"
        )
    return spec.corpus_rows(records, template)
