"""Load a base causal language model and its tokenizer from a hub id, a local directory or a built-in
name, frozen and ready for a PEFT method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedpeft.models.builtin import build_builtin, builtin_names, is_builtin

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedBase:
    model: torch.nn.Module
    tokenizer: object
    source: str
    """What ``from_pretrained`` was given: a local directory or a hub id. Adapters record it."""
    head: str = "causal_lm"
    """The head actually loaded: a task's ``causal_lm`` becomes ``seq2seq_lm`` on an encoder-decoder."""


def resolve_model_source(name: str) -> str:
    """Directory or hub id that ``from_pretrained`` should load for the configured ``model.name``."""
    if is_builtin(name):
        try:
            return str(build_builtin(name))
        except (ValueError, FileNotFoundError) as err:
            raise ModelLoadError(f"model.name={name!r}: {err}") from None
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"model.name={name!r} is a local path without config.json")
        return str(path.resolve())
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model.name={name!r}: no such directory")
    return name


def load_tokenizer(name: str):
    """The tokenizer of ``model.name`` alone (no weights), with a pad token."""
    from transformers import AutoTokenizer

    source = resolve_model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise ModelLoadError(_unreachable(name, err)) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _unreachable(name: str, err: Exception) -> str:
    return (
        f"could not load model.name={name!r} ({err.__class__.__name__}: {err}). Offline, pass a local "
        f"model directory or one of the built-in models: {', '.join(builtin_names())}"
    )


HEADS = ("causal_lm", "seq2seq_lm", "sequence_classification", "embedding")
GENERATIVE_HEADS = ("causal_lm", "seq2seq_lm")


def load_base_model(name: str, dtype: str = "float32", head: str = "causal_lm", num_labels: int = 2) -> LoadedBase:
    """The frozen base model and tokenizer named by ``model.name``; a tokenizer without a pad token
    gets its end-of-sequence token as pad (labels mask padding, so this changes no loss).

    A text-generation task (head ``causal_lm``) on an encoder-decoder model (T5, CodeT5) loads the
    seq2seq head instead: the prompt goes to the encoder, the response is the decoder's target."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
    )

    if head not in HEADS:
        raise ValueError(f"unknown model head {head!r}; valid: {', '.join(HEADS)}")
    tokenizer = load_tokenizer(name)
    source = resolve_model_source(name)
    try:
        encoder_decoder = bool(getattr(AutoConfig.from_pretrained(source), "is_encoder_decoder", False))
        if encoder_decoder and head == "embedding":
            raise ModelLoadError(
                f"model.name={name!r} is an encoder-decoder; the embedding (code search) head needs an encoder "
                f"or decoder model (BERT, RoBERTa, Llama, GPT-2)"
            )
        if encoder_decoder and head == "causal_lm":
            head = "seq2seq_lm"
        if head == "seq2seq_lm":
            model = AutoModelForSeq2SeqLM.from_pretrained(source, dtype=DTYPES[dtype])
        elif head == "causal_lm":
            model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype])
        elif head == "embedding":
            model = AutoModel.from_pretrained(source, dtype=DTYPES[dtype])
        else:
            # The new classification head is initialised from the caller's torch RNG (seed it there).
            model = AutoModelForSequenceClassification.from_pretrained(
                source, dtype=DTYPES[dtype], num_labels=num_labels, pad_token_id=tokenizer.pad_token_id
            )
    except OSError as err:
        raise ModelLoadError(_unreachable(name, err)) from err
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedBase(model=model, tokenizer=tokenizer, source=source, head=head)
