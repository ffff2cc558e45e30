"""Sampling settings and text generation from one adapter of a served run, whole or streamed.

:class:`SamplingSettings` holds what a user may choose per request (S4 Shepherd's defaults: temperature 0.1,
top_p 0.75, top_k 40, 4 beams, 128 new tokens); :func:`sampling_from` builds it from any mapping (CLI flags,
an HTTP request body) and rejects unknown names and out-of-range values with a :class:`ServingError` that
names the parameter and what is valid. :func:`generate` returns a completion, :func:`stream` yields it in
chunks as it is generated.

Notable choices:
- The prompt is sent as given: formatting it with the run's template (``ServedRun.format_prompt``) is the
  caller's choice. It is tokenized the way fedpeft's tasks tokenize training rows: the tokenizer's BOS (if it
  has one), then the text without special tokens.
- ``temperature`` 0 is greedy (``do_sample`` off, so top_p and top_k do not apply); ``num_beams`` > 1 is beam
  search (beam sampling when the temperature is above 0); ``top_k`` 0 means no top-k cut.
- Sampling is reproducible for ``seed`` without touching the caller's random state
  (:func:`fedpeft.models.generate.seeded`).
- A prompt that, with ``max_new_tokens``, does not fit the model's context (``max_position_embeddings`` or
  its equivalent) is refused with both numbers, as OpenAI's API does, rather than silently shortened.
- The completion is the decoded new tokens only (special tokens skipped), cut at the earliest stop
  sequence; generation ends as soon as a stop sequence appears (a stateless stopping criterion, which beam
  search's reordered candidates need) or at EOS.
- Streaming uses transformers' ``TextIteratorStreamer`` with ``model.generate`` in a worker thread. That
  thread holds ``run.use(name)`` for the whole generation, so the lock is taken and released by one thread
  however the consumer iterates (a web server may call ``next`` from different threads). Text that could be
  the start of a stop sequence is held back until it is known not to be one. Closing the iterator early
  stops the generation at its next step.
- transformers cannot stream beam search (the best beam is known only at the end): with ``num_beams`` > 1
  :func:`stream` yields the finished text as one chunk.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from fedpeft.models.generate import context_length, cut_at_stop, decode_continuations, evaluation_mode, seeded
from fedpeft.serving.adapters import ServedRun, ServingError


@dataclass(frozen=True)
class SamplingSettings:
    """How to sample a completion; the defaults are Shepherd's (S4)."""

    temperature: float = 0.1
    top_p: float = 0.75
    top_k: int = 40
    num_beams: int = 4
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        _check_ranges(self, "sampling settings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


SAMPLING_PARAMETERS = tuple(f.name for f in fields(SamplingSettings))
_FLOATS = ("temperature", "top_p")
_INTS = ("top_k", "num_beams", "max_new_tokens", "seed")


def _check_ranges(settings: SamplingSettings, source: str) -> None:
    s = settings
    problems = []
    if not (math.isfinite(s.temperature) and s.temperature >= 0):
        problems.append(f"temperature={s.temperature}: must be a finite number >= 0 (0 is greedy)")
    if not 0 < s.top_p <= 1:
        problems.append(f"top_p={s.top_p}: must be in (0, 1]")
    if s.top_k < 0:
        problems.append(f"top_k={s.top_k}: must be >= 0 (0: no top-k cut)")
    if s.num_beams < 1:
        problems.append(f"num_beams={s.num_beams}: must be >= 1")
    if s.max_new_tokens < 1:
        problems.append(f"max_new_tokens={s.max_new_tokens}: must be >= 1")
    if s.seed < 0:
        problems.append(f"seed={s.seed}: must be >= 0")
    if any(not isinstance(x, str) or not x for x in s.stop):
        problems.append(f"stop={list(s.stop)!r}: must be non-empty strings")
    if problems:
        raise ServingError(f"{source}: " + "; ".join(problems))


def _coerce(name: str, value: Any, source: str) -> Any:
    if name == "stop":
        stop = [value] if isinstance(value, str) else value
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
            raise ServingError(f"{source}: stop={value!r} must be a string or a list of strings")
        return tuple(stop)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "a number" if name in _FLOATS else "an integer"
        raise ServingError(f"{source}: {name}={value!r} must be {kind}")
    if name in _INTS:
        if value != int(value):
            raise ServingError(f"{source}: {name}={value!r} must be an integer")
        return int(value)
    return float(value)


def sampling_from(
    mapping: Mapping[str, Any], source: str = "sampling settings", base: SamplingSettings | None = None
) -> SamplingSettings:
    """``base`` (default: Shepherd's settings) with the values in ``mapping``; a value of None keeps the
    default. An unknown name, a value of the wrong type or out of range is a :class:`ServingError` that starts
    with ``source`` (e.g. ``request body``) and names the parameter and what is valid."""
    unknown = sorted(set(mapping) - set(SAMPLING_PARAMETERS))
    if unknown:
        raise ServingError(
            f"{source}: unknown sampling parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(SAMPLING_PARAMETERS)}"
        )
    chosen = {name: _coerce(name, value, source) for name, value in mapping.items() if value is not None}
    base = base or SamplingSettings()
    try:
        return replace(base, **chosen)
    except ServingError as err:
        raise ServingError(str(err).replace("sampling settings", source, 1)) from None


def check_context(model: Any, tokenizer: Any, prompt_ids: Sequence[int], max_new_tokens: int) -> None:
    """Refuse a prompt that, with ``max_new_tokens`` more, does not fit the model's context, saying the numbers."""
    del tokenizer  # the context is the model's; the tokenizer's model_max_length is a training-time default
    if not prompt_ids:
        raise ServingError("the prompt is empty (and the tokenizer has no BOS token to start from)")
    limit = context_length(model)
    if limit is None:
        return
    used = len(prompt_ids)
    if used >= limit:
        raise ServingError(
            f"the prompt is {used} tokens, over the model's context of {limit} tokens; shorten the prompt"
        )
    if used + max_new_tokens > limit:
        raise ServingError(
            f"the prompt is {used} tokens and max_new_tokens is {max_new_tokens}: {used + max_new_tokens} tokens, "
            f"over the model's context of {limit} tokens; set max_new_tokens to at most {limit - used} or shorten "
            "the prompt"
        )


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids as fedpeft's tasks build them: BOS (if any), then the text without special tokens."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + list(tokenizer(prompt, add_special_tokens=False)["input_ids"])


class _StopText(StoppingCriteria):
    """Ends a row once the text of its newest tokens holds a stop sequence, and every row once ``cancel`` is
    set. Stateless between steps: beam search passes other candidate rows at every step. A stop sequence of
    ``b`` UTF-8 bytes spans at most ``b`` tokens, so the last ``b + 2`` tokens show any the newest completed."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], start: int, cancel: threading.Event | None = None):
        self.tokenizer, self.stop, self.start, self.cancel = tokenizer, list(stop), start, cancel
        self.window = max((len(s.encode("utf-8")) for s in self.stop), default=0) + 2

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        rows = input_ids.shape[0]
        if self.cancel is not None and self.cancel.is_set():
            return torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        if self.stop:
            first = max(self.start, input_ids.shape[1] - self.window)
            tails = self.tokenizer.batch_decode(input_ids[:, first:], skip_special_tokens=True)
            for row, tail in enumerate(tails):
                done[row] = any(s in tail for s in self.stop)
        return done


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def _generation_config(model: Any, tokenizer: Any, settings: SamplingSettings) -> GenerationConfig:
    options: dict[str, Any] = {"do_sample": False}
    if not settings.greedy:
        options = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
        options["top_k"] = settings.top_k
    eos = _eos_ids(model, tokenizer)
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        num_beams=settings.num_beams,
        num_return_sequences=1,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [None])[0],
        eos_token_id=eos or None,
        **options,
    )


def _prepared(run: ServedRun, name: str, prompt: str, settings: SamplingSettings) -> list[int]:
    """The prompt's ids once the name, the settings and the prompt's length have been checked."""
    run.check_name(name)
    if not isinstance(settings, SamplingSettings):
        raise TypeError(f"settings must be SamplingSettings, not {type(settings).__name__}")
    ids = prompt_ids(run.tokenizer, prompt)
    check_context(run.model, run.tokenizer, ids, settings.max_new_tokens)
    return ids


def _run_generate(
    run: ServedRun,
    name: str,
    ids: list[int],
    settings: SamplingSettings,
    streamer: TextIteratorStreamer | None = None,
    cancel: threading.Event | None = None,
) -> list[int]:
    """The new token ids, generated with adapter ``name`` held for the whole call."""
    with run.use(name) as model, evaluation_mode(model) as device, seeded(settings.seed, device):
        inputs = torch.tensor([ids], dtype=torch.long, device=device)
        stops = StoppingCriteriaList([_StopText(run.tokenizer, settings.stop, len(ids), cancel)])
        out = model.generate(
            input_ids=inputs,
            attention_mask=torch.ones_like(inputs),
            generation_config=_generation_config(model, run.tokenizer, settings),
            stopping_criteria=stops,
            streamer=streamer,
        )
    encoder_decoder = bool(getattr(run.model.config, "is_encoder_decoder", False))
    return out[0, 1 if encoder_decoder else len(ids) :].tolist()


def generate(run: ServedRun, name: str, prompt: str, settings: SamplingSettings | None = None) -> str:
    """The completion of ``prompt`` (sent as given) by adapter ``name`` of ``run``, cut at its first stop
    sequence."""
    settings = settings or SamplingSettings()
    ids = _prepared(run, name, prompt, settings)
    new = _run_generate(run, name, ids, settings)
    encoder_decoder = bool(getattr(run.model.config, "is_encoder_decoder", False))
    (text,) = decode_continuations(run.tokenizer, [ids], torch.tensor([new], dtype=torch.long), encoder_decoder)
    return cut_at_stop(text, settings.stop)


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could begin a stop sequence."""
    longest = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


def stream(run: ServedRun, name: str, prompt: str, settings: SamplingSettings | None = None) -> Iterator[str]:
    """The completion of ``prompt`` by adapter ``name`` in text chunks as they are generated (beam search: one
    chunk at the end). The name, settings and prompt length are checked when this is called, before the first
    chunk is asked for; the chunks join to what :func:`generate` returns for the same settings."""
    settings = settings or SamplingSettings()
    ids = _prepared(run, name, prompt, settings)
    if settings.num_beams > 1:
        return _whole(run, name, ids, settings)
    return _chunks(run, name, ids, settings)


def _whole(run: ServedRun, name: str, ids: list[int], settings: SamplingSettings) -> Iterator[str]:
    new = _run_generate(run, name, ids, settings)
    text = cut_at_stop(run.tokenizer.decode(new, skip_special_tokens=True), settings.stop)
    if text:
        yield text


def _chunks(run: ServedRun, name: str, ids: list[int], settings: SamplingSettings) -> Iterator[str]:
    streamer = TextIteratorStreamer(run.tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancel = threading.Event()
    failure: list[BaseException] = []

    def work() -> None:
        try:
            _run_generate(run, name, ids, settings, streamer, cancel)
        except BaseException as err:  # re-raised in the consumer's thread
            failure.append(err)
            streamer.end()

    worker = threading.Thread(target=work, name=f"fedpeft-generate-{name}", daemon=True)
    worker.start()
    pending, exhausted = "", False
    try:
        for chunk in streamer:
            pending += chunk
            if any(s in pending for s in settings.stop):
                cut = cut_at_stop(pending, settings.stop)
                if cut:
                    yield cut
                pending = ""
                cancel.set()
                break
            keep = _held_back(pending, settings.stop)
            ready, pending = pending[: len(pending) - keep], pending[len(pending) - keep :]
            if ready:
                yield ready
        else:
            exhausted = True
            if pending:
                yield pending
    finally:
        cancel.set()
        if not exhausted:
            for _ in streamer:  # up to the end signal, which the cancelled generation sends at its next step
                pass
        worker.join()
    if failure:
        raise failure[0]
