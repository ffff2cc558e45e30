"""Batched sampling of completions from a causal or encoder-decoder LM, for the code-evaluation suites.

:func:`generate_completions` gives ``n`` completions per prompt; :func:`make_ask` wraps it as the
``ask(prompts, n, temperature, stop)`` callable that ``fedpeft.evaluation.suites.base.Ask`` describes and
counts the tokens it generated and the seconds it took.

Notable choices:
- Prompts are tokenized the way fedpeft's tasks tokenize them for training: the tokenizer's BOS (if it has
  one) and then the text without special tokens.
- Prompts are sorted by token length (longest first) and batched; results come back in prompt order.
  ``batch_size`` counts *sequences* (prompts x samples), and a prompt's ``n`` samples always share one batch
  (``num_return_sequences``), so a batch holds ``max(1, batch_size // n)`` prompts.
- Decoder-only models are left-padded (the tokenizer's padding side is set for the call and restored), so
  every row's continuation starts at the same position; encoder-decoders are right-padded and their decoder
  output is the continuation. The attention mask is passed and the KV cache is used.
- Temperature 0 is greedy: each prompt is decoded once and its completion repeated ``n`` times. Otherwise
  nucleus sampling with ``top_p`` and no top-k cut (Codex's setting).
- A completion is the text of the new tokens only (special tokens skipped), cut at its first stop sequence.
  For a decoder it is read as ``decode(prompt + new)`` minus ``decode(prompt)`` where that prefix matches, so
  tokenizers that drop a leading space when decoding a piece alone (SentencePiece) keep the indentation.
- A batch stops early once every row has produced EOS or a stop sequence: :class:`StopSequences` checks the
  decoded tail of each unfinished row after every step and finishes rows individually. transformers'
  ``stop_strings`` was not used because it matches across the prompt boundary (a prompt ending in ``\\n``
  and a generated ``def `` would stop on ``\\ndef ``), while completions are cut on their own text.
- Sampling is reproducible for a seed without touching the caller's random state: generation runs inside
  ``torch.random.fork_rng`` (CPU and every visible CUDA device) after ``torch.manual_seed(seed)``. The same
  seed, prompts, ``n`` and ``batch_size`` give the same samples; a different ``batch_size`` regroups the rows
  and so draws different (equally valid) samples.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

DEFAULT_BATCH_SIZE = 32
"""Sequences (prompts x samples) generated together by default."""


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[torch.device]:
    """Eval mode (no dropout) and no autograd for the block, the model's device to it, the caller's mode
    restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's generators seeded with ``seed`` inside the block and restored to the caller's state after."""
    devices = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop sequence."""
    end = len(text)
    for s in stop:
        at = text.find(s)
        if at != -1:
            end = min(end, at)
    return text[:end]


class StopSequences(StoppingCriteria):
    """Finishes each row once it has produced an EOS token or the text of its new tokens contains a stop
    sequence, and records how many new tokens each row produced up to then (``lengths``).

    After every step only the last few new tokens of each unfinished row are decoded: a stop sequence of
    ``b`` UTF-8 bytes spans at most ``b`` tokens, so a window of ``b + 2`` tokens (one spare for a leading
    space a tokenizer drops when decoding a piece alone) sees any stop sequence the newest token completes;
    one completed earlier was already seen. Rows that have finished stay finished."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], start: int, eos: Sequence[int]):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.start = start
        self.eos = torch.tensor(list(eos), dtype=torch.long)
        self.window = max((len(s.encode("utf-8")) for s in self.stop), default=0) + 2
        self.done: torch.Tensor | None = None
        self.lengths: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        produced = input_ids.shape[1] - self.start
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            self.lengths = torch.zeros(input_ids.shape[0], dtype=torch.long)
        ended = ~self.done & torch.isin(input_ids[:, -1], self.eos.to(input_ids.device))
        rows = (~self.done & ~ended).nonzero().flatten().tolist()
        if self.stop and rows:
            first = max(self.start, input_ids.shape[1] - self.window)
            tails = self.tokenizer.batch_decode(input_ids[rows, first:], skip_special_tokens=True)
            for row, tail in zip(rows, tails, strict=True):
                if any(s in tail for s in self.stop):
                    ended[row] = True
        self.lengths[ended.cpu()] = produced
        self.done |= ended
        return self.done

    def tokens(self, width: int) -> int:
        """New tokens produced in all (a row still running at the end produced ``width``)."""
        if self.done is None or self.lengths is None:
            return 0
        return int(torch.where(self.done.cpu(), self.lengths, width).sum())


def _check(prompts: Sequence[str], n: int, temperature: float, stop: Sequence[str], **sizes: float) -> None:
    if isinstance(prompts, str):
        raise ValueError("prompts must be a sequence of strings, not one string")
    if isinstance(stop, str):
        raise ValueError(f"stop={stop!r}: give a sequence of stop strings, not one string")
    if n < 1:
        raise ValueError(f"n={n}: the number of completions per prompt must be at least 1")
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature}: must be >= 0 (0 is greedy decoding)")
    if any(not s for s in stop):
        raise ValueError(f"stop={list(stop)!r} holds an empty stop sequence, which would cut every completion")
    for name, value in sizes.items():
        if name == "top_p":
            if not 0 < value <= 1:
                raise ValueError(f"top_p={value}: must be in (0, 1]")
        elif value < 1:
            raise ValueError(f"{name}={value}: must be at least 1")


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's end-of-sequence ids (its generation config may list several), else the tokenizer's."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"neither the model nor tokenizer {type(tokenizer).__name__} has an end-of-sequence token")
    return [eos] if isinstance(eos, int) else list(eos)


def _generation_config(
    tokenizer: Any, eos: list[int], greedy: bool, n: int, temperature: float, top_p: float, max_new_tokens: int
) -> GenerationConfig:
    options: dict[str, Any] = {"do_sample": False}
    if not greedy:
        options = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
        options["num_return_sequences"] = n
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=1,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        **options,
    )


def _generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    n: int,
    temperature: float,
    stop: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    top_p: float,
) -> tuple[list[list[str]], int]:
    """(completions per prompt, tokens generated): see :func:`generate_completions`."""
    _check(prompts, n, temperature, stop, max_new_tokens=max_new_tokens, batch_size=batch_size, top_p=top_p)
    if not prompts:
        return [], 0
    if tokenizer.pad_token_id is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no pad token, which batched generation needs; set one "
            "(e.g. tokenizer.pad_token = tokenizer.eos_token, as fedpeft.models.base.load_tokenizer does)"
        )
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    greedy = temperature == 0
    per_prompt = 1 if greedy else n
    eos = _eos_ids(model, tokenizer)
    config = _generation_config(tokenizer, eos, greedy, n, temperature, top_p, max_new_tokens)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = [bos + t for t in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    ids = fit_context(model, ids, len(bos), max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: -len(ids[i]))
    step = max(1, batch_size // per_prompt)
    results: list[list[str]] = [[] for _ in prompts]
    generated = 0
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right" if encoder_decoder else "left"
    try:
        with evaluation_mode(model) as device, seeded(seed, device):
            for at in range(0, len(order), step):
                chosen = order[at : at + step]
                batch = tokenizer.pad({"input_ids": [ids[i] for i in chosen]}, padding=True, return_tensors="pt")
                batch = {k: v.to(device) for k, v in batch.items()}
                start = 1 if encoder_decoder else batch["input_ids"].shape[1]
                watch = StopSequences(tokenizer, stop, start, eos)
                out = model.generate(**batch, generation_config=config, stopping_criteria=StoppingCriteriaList([watch]))
                new = out[:, start:]
                generated += watch.tokens(new.shape[1])
                texts = decode_continuations(
                    tokenizer, [ids[i] for i in chosen for _ in range(per_prompt)], new, encoder_decoder
                )
                for k, i in enumerate(chosen):
                    mine = [cut_at_stop(t, stop) for t in texts[k * per_prompt : (k + 1) * per_prompt]]
                    results[i] = mine * n if greedy else mine
    finally:
        tokenizer.padding_side = padding_side
    return results, generated


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
"""Config attributes that give a model's context length, in the order they are looked up."""


def context_length(model: Any) -> int | None:
    """The longest sequence the model's positions cover (None when its config does not say)."""
    config = getattr(model, "config", None)
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_context(model: Any, ids: list[list[int]], keep_head: int, max_new_tokens: int) -> list[list[int]]:
    """Each prompt cut from the left (its first ``keep_head`` tokens, the BOS, kept) so that prompt plus
    ``max_new_tokens`` fits the model's context: the end of a prompt, where the answer starts, matters most.
    Positions past the context are what the model never saw in training."""
    limit = None if getattr(model.config, "is_encoder_decoder", False) else context_length(model)
    if limit is None:  # an encoder-decoder's prompt goes to the encoder, not the decoder's positions
        return ids
    room = limit - max_new_tokens
    if room <= keep_head:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's context of {limit} tokens"
        )
    return [t if len(t) <= room else t[:keep_head] + t[len(t) - (room - keep_head) :] for t in ids]


def decode_continuations(
    tokenizer: Any, prompt_ids: list[list[int]], new: torch.Tensor, encoder_decoder: bool
) -> list[str]:
    """Each row of ``new`` as text continuing its prompt: decode(prompt + new) minus decode(prompt), which keeps
    the leading space a SentencePiece piece loses when decoded alone (an encoder-decoder's output stands alone)."""
    rows = new.tolist()
    alone = tokenizer.batch_decode(rows, skip_special_tokens=True)
    if encoder_decoder:
        return alone
    heads = tokenizer.batch_decode(prompt_ids, skip_special_tokens=True)
    whole = tokenizer.batch_decode([p + r for p, r in zip(prompt_ids, rows, strict=True)], skip_special_tokens=True)
    return [w[len(h) :] if w.startswith(h) else a for h, w, a in zip(heads, whole, alone, strict=True)]


def generate_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    n: int,
    temperature: float,
    stop: Sequence[str],
    max_new_tokens: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    top_p: float = 0.95,
) -> list[list[str]]:
    """``n`` completions of each prompt, in prompt order, each cut at its first stop sequence.

    ``temperature`` 0 decodes greedily (once per prompt, repeated ``n`` times); above 0 it samples with
    nucleus ``top_p``, reproducibly for ``seed``. ``batch_size`` bounds the sequences generated together; a
    prompt's samples are never split across batches. The model's train/eval mode and the tokenizer's padding
    side are as the caller left them afterwards."""
    return _generate(model, tokenizer, prompts, n, temperature, stop, max_new_tokens, batch_size, seed, top_p)[0]


class Ask:
    """``ask(prompts, n, temperature, stop)`` over one model, counting what it generated.

    ``generated_tokens`` counts the tokens the model produced (up to and including EOS or the token that
    completed a stop sequence; a greedy completion counts once, not ``n`` times), ``seconds`` the wall time
    of the calls and ``calls`` the calls."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int, batch_size: int, seed: int, top_p: float):
        _check([], 1, 0.0, (), max_new_tokens=max_new_tokens, batch_size=batch_size, top_p=top_p)
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size, self.seed, self.top_p = max_new_tokens, batch_size, seed, top_p
        self.generated_tokens = 0
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, prompts: Sequence[str], n: int, temperature: float, stop: Sequence[str]) -> list[list[str]]:
        began = time.perf_counter()
        completions, tokens = _generate(
            self.model,
            self.tokenizer,
            prompts,
            n,
            temperature,
            stop,
            self.max_new_tokens,
            self.batch_size,
            self.seed,
            self.top_p,
        )
        self.seconds += time.perf_counter() - began
        self.generated_tokens += tokens
        self.calls += 1
        return completions

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def make_ask(
    model: Any,
    tokenizer: Any,
    max_new_tokens: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
    top_p: float = 0.95,
) -> Ask:
    """The suites' ``ask`` callable over ``model``: :func:`generate_completions` with these settings."""
    return Ask(model, tokenizer, max_new_tokens, batch_size, seed, top_p)
