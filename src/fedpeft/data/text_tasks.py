"""Causal language-model tasks built from the stdlib corpus: rows of (prompt, response) text, and their
tokenization with the prompt boundary kept exact.

- ``instruction`` (S4's setting with code in place of Dolly): prompt = the Alpaca template around
  "signature + docstring", response = the body.
- ``completion`` (CodeXGLUE code completion): no prompt, response = the whole function; scored by
  next-token accuracy ignoring special and padding tokens, and perplexity.
- ``code_to_text`` (CodeXGLUE code-to-text): prompt = the function without its docstring, response =
  the docstring's first sentence; scored by smoothed BLEU-4 of greedy generations on the test split.
- ``defect`` (CodeXGLUE defect detection, offline): a function, clean or with one injected bug
  (``fedpeft.data.defects``) -> label; a sequence-classification head; accuracy, F1 and MCC.
- ``code_search`` (CodeXGLUE NL code search, offline): docstring sentence -> its function among the
  split's other functions; mean-pooled embeddings trained with an in-batch contrastive loss; MRR.
- ``clone`` (CodeXGLUE clone detection, offline): a pair of functions -> clone or not
  (``fedpeft.data.clones``), classified as one sequence; F1 at a threshold chosen on validation.

The category of every row is its top-level module (the natural client id); its split is the source
function's corpus split.
"""

from __future__ import annotations

import re
import textwrap
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedpeft.data.clones import rewrite_clone
from fedpeft.data.defects import defect_example, normalize_code, parses
from fedpeft.data.stdlib_corpus import FunctionRecord, corpus_split
from fedpeft.tensors.batching import TokenizedExample

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
MIN_RESPONSE_TOKENS = 8


@dataclass(frozen=True)
class TextPair:
    prompt: str
    response: str
    category: str
    split: str = "train"
    """The source function's corpus split: 'test' rows are never seen by the pretrained built-in model."""


def format_prompt(instruction: str, template: str = "alpaca") -> str:
    if template != "alpaca":
        raise ValueError(f"unknown template {template!r}; valid: alpaca")
    return f"{ALPACA_PREAMBLE}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


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


def first_sentence(docstring: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    paragraph = " ".join(docstring.strip().split("\n\n")[0].split())
    end = re.search(r"(?<=[.!?])\s+(?=[A-Z])", paragraph)  # "e.g. words" does not end a sentence
    return paragraph[: end.start()] if end else paragraph


def code_to_text_rows(records: Sequence[FunctionRecord], template: str) -> list[TextPair]:
    rows = []
    for rec in records:
        summary = first_sentence(rec.docstring)
        if not summary:
            continue
        code = rec.signature + "\n" + textwrap.indent(rec.body, "    ")
        prompt = format_prompt(f"Summarise this Python function in one sentence.\n\n{code}", template)
        rows.append(TextPair(prompt=prompt, response=summary, category=rec.module, split=corpus_split(rec)))
    return rows


def code_search_rows(records: Sequence[FunctionRecord], template: str = "") -> list[TextPair]:
    """Query = the docstring's first sentence, candidate = the function without its docstring."""
    rows = []
    for rec in records:
        query = first_sentence(rec.docstring)
        if query:
            code = rec.signature + "\n" + textwrap.indent(rec.body, "    ")
            rows.append(TextPair(prompt=query, response=code, category=rec.module, split=corpus_split(rec)))
    return rows


def completion_rows(records: Sequence[FunctionRecord], template: str) -> list[TextPair]:
    return [TextPair(prompt="", response=rec.code, category=rec.module, split=corpus_split(rec)) for rec in records]


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: int
    category: str
    split: str = "train"
    kind: str = ""
    """What produced the label (for defects: the mutation, or 'clean')."""
    text_b: str = ""
    """Second text of a pair task (clone detection); empty for single-text tasks."""


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


def tokenize_labelled(rows: Sequence[LabelledText], tokenizer, max_length: int) -> tuple[list[TokenizedExample], int]:
    """BOS + text + EOS; rows longer than ``max_length`` are dropped, not cut, since the evidence for the
    label (an injected bug) may sit in the part that would be cut. Returns the examples and the drop count."""
    ids = tokenizer([r.text for r in rows], add_special_tokens=False)["input_ids"]
    ids_b = tokenizer([r.text_b for r in rows], add_special_tokens=False)["input_ids"]
    bos, end = boundary_tokens(tokenizer)
    eos = [end]
    out = []
    for row, tokens, tokens_b in zip(rows, ids, ids_b, strict=True):
        full = bos + tokens + eos + (tokens_b + eos if row.text_b else [])
        if len(full) <= max_length:
            out.append(TokenizedExample(tuple(full), prompt_len=0, category=row.category, label=row.label))
    return out, len(rows) - len(out)


TEXT_TASKS: dict[str, Callable[[Sequence[FunctionRecord], str], list[TextPair]]] = {
    "instruction": instruction_rows,
    "completion": completion_rows,
    "code_to_text": code_to_text_rows,
    "defect": defect_rows,
    "clone": clone_rows,
    "code_search": code_search_rows,
}
TASK_HEADS = {"instruction": "causal_lm", "completion": "causal_lm", "code_to_text": "causal_lm"} | {
    "defect": "sequence_classification",
    "clone": "sequence_classification",
    "text_classification": "sequence_classification",
    "code_search": "embedding",
}
TASK_NUM_LABELS = {"defect": 2, "clone": 2, "text_classification": 2}
THRESHOLD_ON_VALIDATION = {"clone"}
"""Tasks whose F1 is taken at the decision threshold that maximises F1 on the clients' validation rows
(S0 tuned it on the evaluation set; we never do)."""
SCORE_SPECIAL_TOKENS = {
    "instruction": True,
    "completion": False,
    "code_to_text": True,
    "defect": True,
    "clone": True,
    "text_classification": True,
    "code_search": True,
}
"""Whether a task's token accuracy counts special tokens (end-of-sequence): CodeXGLUE's completion
metric ignores them; for instructions, knowing where to stop is part of the answer."""


GENERATION_METRICS = {"code_to_text": "bleu"}
"""Tasks scored on greedy generations of the test split, besides loss and token accuracy."""


def rows_for_task(task: str, records: Sequence[FunctionRecord], template: str) -> list[TextPair] | list[LabelledText]:
    if task not in TEXT_TASKS:
        raise ValueError(
            f"data.task={task!r} has no built-in stdlib version; give it a labelled dataset, e.g. "
            f"--set data.source=nyu-mll/glue/cola or a local file with data.schema=cola"
        )
    return TEXT_TASKS[task](records, template)


def tokenize_task_rows(rows, tokenizer, max_length: int) -> tuple[list[TokenizedExample], int]:
    """Tokenize rows of either kind (prompt/response pairs or labelled texts)."""
    if rows and isinstance(rows[0], LabelledText):
        return tokenize_labelled(rows, tokenizer, max_length)
    return tokenize_rows(rows, tokenizer, max_length)


def boundary_tokens(tokenizer) -> tuple[list[int], int]:
    """(start tokens, end token) for a sequence: BOS/EOS for decoders, CLS/SEP for BERT-style encoders,
    whose classifier reads the first position."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither an EOS nor a SEP token to end sequences")
    return ([start] if start is not None else []), end


def tokenize_rows(rows: Sequence[TextPair], tokenizer, max_length: int) -> tuple[list[TokenizedExample], int]:
    """Tokenize prompt and response separately (so the prompt boundary is exact), append EOS and cut at
    ``max_length``. Rows whose prompt leaves fewer than 8 response tokens are dropped: they would train
    on nothing. Returns the examples and how many rows were dropped."""
    prompts = tokenizer([r.prompt for r in rows], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r.response for r in rows], add_special_tokens=False)["input_ids"]
    bos, eos = boundary_tokens(tokenizer)
    out, dropped = [], 0
    for row, p, r in zip(rows, prompts, responses, strict=True):
        prompt = bos + p
        if len(prompt) + MIN_RESPONSE_TOKENS > max_length:
            dropped += 1
            continue
        ids = (prompt + r + [eos])[:max_length]
        out.append(TokenizedExample(tuple(ids), prompt_len=len(prompt), category=row.category, reference=row.response))
    return out, dropped
