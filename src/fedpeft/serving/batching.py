"""Batching concurrent generation requests per adapter, for the HTTP server (:mod:`fedpeft.serving.api`).

A :class:`Batcher` owns one worker thread. Requests (:class:`Job`: token ids of one or more prompts, ``n``
choices each, sampling settings, an adapter name) are queued; the worker takes everything queued (waiting
``window_s`` after the first for more to arrive), groups the jobs that can share one ``model.generate`` call,
runs each group under ``run.use(name)`` and completes each job's future. :attr:`Batcher.history` records
the last 1,000 batches and :meth:`Batcher.stats` counts all, so tests and benchmarks can see that concurrent
requests really were batched.

Notable choices:
- A group is one adapter and one way of choosing tokens: all greedy jobs together; sampled jobs with the
  same temperature and top_p together; a sampled job with a ``seed`` alone, so that it is reproducible
  (its rows drawn from a generator seeded with it, whatever else is queued). Unseeded sampled groups draw a
  fresh seed each, inside ``torch.random.fork_rng`` (``fedpeft.models.generate.seeded``), so the process's
  random state is never touched.
- Each row of a batch keeps its own ``max_tokens`` and stop sequences: the group generates up to the
  largest ``max_tokens`` and a per-row stopping criterion (:class:`RowWatch`) finishes every row on EOS, on
  one of its stop sequences or at its own token limit, so rows are cut at the token, not re-decoded.
  ``fedpeft.models.generate.generate_completions`` takes one stop list and one length per call, so it is
  not used here; its helpers (eval mode, seeding, stop cuts) are.
- Streaming is batched too: the same criterion is called after every generated token and hands each
  streaming row's new text to the job's ``on_text`` callback. Text is only handed out once it is stable:
  never an unfinished UTF-8 character, never the first characters of what could still become a stop
  sequence; so the streamed pieces join to exactly the final text.
- Greedy jobs with ``n`` > 1 decode each prompt once and repeat the text (greedy decoding is deterministic).
- Prompts are left-padded by hand (no tokenizer state is changed, so other users of the tokenizer are not
  disturbed); encoder-decoder models are right-padded and their decoder output is the continuation.
- Continuation text is ``decode(context + new) - decode(context)`` with the last few prompt tokens as
  context, so tokenizers that drop a leading space when decoding a piece alone keep it.
- A job whose client went away is cancelled: its rows finish at the next token.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from fedpeft.models.generate import context_length as model_context_length
from fedpeft.models.generate import cut_at_stop, evaluation_mode, seeded
from fedpeft.serving.adapters import ServedRun, ServingError

CONTEXT_TOKENS = 8
"""Prompt tokens decoded before the new ones when reading a continuation's text."""
_STOP = object()


@dataclass(frozen=True)
class Choice:
    """One generated continuation: its text, why it ended (``stop``: EOS or a stop sequence; ``length``:
    its ``max_tokens``) and the tokens generated for it."""

    text: str
    finish_reason: str
    tokens: int


@dataclass
class Job:
    """One API request: ``n`` continuations of each prompt (token ids), choice ``i * n + j`` being prompt
    ``i``'s ``j``-th. ``on_text(choice, text)`` (called from the worker thread) receives the text of each
    choice piece by piece as it is generated; the future gets every :class:`Choice` at the end."""

    model: str
    prompts: list[list[int]]
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    on_text: Callable[[int, str], None] | None = None
    future: Future = field(default_factory=Future)
    cancelled: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def cancel(self) -> None:
        """Stop generating for this job (its client went away); its rows finish at the next token."""
        self.cancelled = True


@dataclass(frozen=True)
class BatchRecord:
    model: str
    requests: int
    rows: int
    seconds: float


@dataclass
class _Row:
    job: Job
    ids: list[int]
    choices: list[int]
    emitted: str = ""
    done: bool = False
    tokens: int = 0
    reason: str = "length"


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids as fedpeft's tasks and generation tokenize prompts: BOS (if any), then the text
    without special tokens."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(text, add_special_tokens=False)["input_ids"]


def context_length(model: Any, tokenizer: Any) -> int | None:
    """The most tokens (prompt plus generated) the model takes, from its config, else the tokenizer's limit
    where it names one; None where neither says."""
    from_config = model_context_length(model)
    if from_config is not None:
        return from_config
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 10**6 else None


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


class RowWatch(StoppingCriteria):
    """Called by ``generate`` after every token: finishes each row on EOS, a stop sequence of its job, its
    job's ``max_tokens`` or its job's cancellation, and streams each streaming row's stable new text."""

    def __init__(self, tokenizer: Any, rows: list[_Row], start: int, eos: Sequence[int], encoder_decoder: bool):
        self.tokenizer, self.rows, self.start = tokenizer, rows, start
        self.eos = set(eos)
        self.encoder_decoder = encoder_decoder

    def text(self, row: _Row, new: list[int]) -> str:
        """The text of ``new`` as a continuation of ``row``'s prompt."""
        if self.encoder_decoder:
            return self.tokenizer.decode(new, skip_special_tokens=True)
        context = row.ids[-CONTEXT_TOKENS:]
        head = self.tokenizer.decode(context, skip_special_tokens=True)
        whole = self.tokenizer.decode(context + new, skip_special_tokens=True)
        return whole[len(head) :] if whole.startswith(head) else self.tokenizer.decode(new, skip_special_tokens=True)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        produced = input_ids.shape[1] - self.start
        last = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            if row.done:
                continue
            job = row.job
            new: list[int] | None = None
            if job.cancelled:
                row.done, row.reason = True, "cancelled"
            elif last[i] in self.eos:
                row.done, row.reason = True, "stop"
            elif job.stop or job.on_text:
                new = input_ids[i, self.start :].tolist()
                text = self.text(row, new)
                if job.stop and cut_at_stop(text, job.stop) != text:
                    row.done, row.reason = True, "stop"
                elif job.on_text:
                    self._stream(row, text)
            if not row.done and produced >= job.max_tokens:
                row.done, row.reason = True, "length"
            if row.done:
                row.tokens = produced
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)

    def _stream(self, row: _Row, text: str) -> None:
        stable = text.rstrip("\ufffd")
        hold = max((len(s) for s in row.job.stop), default=1) - 1
        stable = stable[: len(stable) - hold] if hold else stable
        if len(stable) > len(row.emitted) and stable.startswith(row.emitted):
            self._emit(row, stable[len(row.emitted) :])

    @staticmethod
    def _emit(row: _Row, piece: str) -> None:
        row.emitted += piece
        for choice in row.choices:
            row.job.on_text(choice, piece)

    def finish(self, output: torch.Tensor) -> None:
        """Each row's final text (cut at its stop sequence), its last streamed piece handed out."""
        for i, row in enumerate(self.rows):
            if not row.done:
                row.done, row.tokens = True, output.shape[1] - self.start
            new = output[i, self.start : self.start + row.tokens].tolist()
            final = cut_at_stop(self.text(row, new), row.job.stop)
            if row.job.on_text and len(final) > len(row.emitted) and final.startswith(row.emitted):
                self._emit(row, final[len(row.emitted) :])
            row.emitted = final


class Batcher:
    """Generates queued :class:`Job` s in batches per adapter on one worker thread (see the module doc).

    ``max_rows`` bounds the sequences generated together; ``window_s`` is how long the worker waits after
    the first queued job for others to join its batch."""

    def __init__(self, run: ServedRun, max_rows: int = 32, window_s: float = 0.005):
        if max_rows < 1:
            raise ValueError(f"max_rows={max_rows}: must be at least 1")
        self.run, self.max_rows, self.window_s = run, max_rows, window_s
        self.history: deque[BatchRecord] = deque(maxlen=1000)
        self.batches = self.requests = self.largest = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._seeds = random.Random()
        model = run.model
        self._encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self._eos = eos_ids(model, run.tokenizer)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="fedpeft-batcher", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> Future:
        """Queue ``job``; its future gets one :class:`Choice` per choice, in choice order."""
        if self._thread is None or not self._thread.is_alive():
            raise ServingError("the generation worker is not running (Batcher.start was not called or it closed)")
        self.run.check_name(job.model)
        self._queue.put(job)
        return job.future

    def close(self, timeout: float = 30.0) -> None:
        """Finish the batch under way, fail the jobs still queued, stop the worker."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def stats(self) -> dict[str, Any]:
        """Batches run and requests in them since the start; the sizes (requests) of the last 1,000 batches."""
        recent = [b.requests for b in self.history]
        return {"batches": self.batches, "requests": self.requests, "largest": self.largest, "recent_sizes": recent}

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs, stopping = [first], False
            deadline = time.monotonic() + self.window_s
            while True:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is _STOP:
                    stopping = True
                    break
                jobs.append(job)
            for group in _groups(jobs):
                self._run_group(group)
            if stopping:
                break
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not _STOP and not job.future.done():
                job.future.set_exception(ServingError("the server is shutting down"))

    def _run_group(self, jobs: list[Job]) -> None:
        rows = [row for job in jobs if not job.cancelled for row in _rows(job)]
        results: dict[int, dict[int, Choice]] = {id(job): {} for job in jobs}
        for at in range(0, len(rows), self.max_rows):
            chunk = rows[at : at + self.max_rows]
            try:
                began = time.perf_counter()
                self._generate(chunk)
                requests = len({id(r.job) for r in chunk})
                self.history.append(BatchRecord(jobs[0].model, requests, len(chunk), time.perf_counter() - began))
                self.batches, self.requests = self.batches + 1, self.requests + requests
                self.largest = max(self.largest, requests)
            except Exception as err:  # noqa: BLE001 - the worker serves on; the requests get the error
                for row in chunk:
                    if not row.job.future.done():
                        row.job.future.set_exception(err)
                continue
            for row in chunk:
                for choice in row.choices:
                    results[id(row.job)][choice] = Choice(row.emitted, row.reason, row.tokens)
        for job in jobs:
            if job.future.done():
                continue
            if job.cancelled:
                job.future.cancel()
                continue
            got = results[id(job)]
            job.future.set_result([got[i] for i in range(len(job.prompts) * job.n)])

    def _generate(self, rows: list[_Row]) -> None:
        job = rows[0].job
        tokenizer = self.run.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self._eos or [0])[0]
        width = max(len(r.ids) for r in rows)
        padded, mask = [], []
        for r in rows:
            fill = [pad] * (width - len(r.ids))
            padded.append(r.ids + fill if self._encoder_decoder else fill + r.ids)
            ones, zeros = [1] * len(r.ids), [0] * len(fill)
            mask.append(ones + zeros if self._encoder_decoder else zeros + ones)
        options: dict[str, Any] = {"do_sample": False}
        if not job.greedy:
            options = {"do_sample": True, "temperature": job.temperature, "top_p": job.top_p, "top_k": 0}
        config = GenerationConfig(
            max_new_tokens=max(r.job.max_tokens for r in rows),
            num_beams=1,
            use_cache=True,
            pad_token_id=pad,
            eos_token_id=self._eos or None,
            **options,
        )
        seed = job.seed if job.seed is not None else self._seeds.randrange(2**32)
        with self.run.use(job.model) as model, evaluation_mode(model) as device, seeded(seed, device):
            start = 1 if self._encoder_decoder else width
            watch = RowWatch(tokenizer, rows, start, self._eos, self._encoder_decoder)
            output = model.generate(
                input_ids=torch.tensor(padded, device=device),
                attention_mask=torch.tensor(mask, device=device),
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([watch]),
            )
        watch.finish(output)


def _group_key(job: Job) -> tuple:
    if job.greedy:
        return (job.model, "greedy")
    if job.seed is not None:
        return (job.model, "seeded", id(job))
    return (job.model, "sampled", job.temperature, job.top_p)


def _groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs that can share one ``generate`` call, in order of their first job's arrival."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(_group_key(job), []).append(job)
    return list(groups.values())


def _rows(job: Job) -> list[_Row]:
    """The sequences to generate for ``job``: one per prompt and sample (greedy: one per prompt, read for
    all its ``n`` choices)."""
    per_prompt = 1 if job.greedy else job.n
    rows = []
    for i, ids in enumerate(job.prompts):
        choices = [i * job.n + j for j in range(job.n)]
        if job.greedy:
            rows.append(_Row(job, ids, choices))
        else:
            rows.extend(_Row(job, ids, [c]) for c in choices[:per_prompt])
    return rows


__all__ = ["Batcher", "BatchRecord", "Choice", "Job", "RowWatch", "context_length", "encode_prompt", "eos_ids"]
