"""Load a base causal language model and its tokenizer from a hub id, a local directory or a built-in
name, frozen and ready for a PEFT method."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from fedpeft.errors import FedpeftError
from fedpeft.models.builtin import build_builtin, builtin_names, is_builtin

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = ("none", "8bit", "4bit")
MIXED_PRECISION = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelLoadError(FedpeftError, RuntimeError):
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


def resolve_device(device: str) -> torch.device:
    """``model.device``: ``auto`` is the first CUDA GPU when torch sees one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"model.device={device!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"model.device={device!r} but torch {torch.__version__} sees no CUDA GPU (built for CUDA: "
                f"{torch.version.cuda}); use model.device=auto or cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ModelLoadError(f"model.device={device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"model.device={device!r} but MPS is not available here; use model.device=auto or cpu")
    return resolved


def quantization_config(kind: str, dtype: str):
    """transformers' bitsandbytes config for ``model.quantization``: ``8bit`` (LLM.int8) or ``4bit`` (QLoRA's
    NF4 with double quantisation, computing in ``model.dtype``); None for ``none``. bitsandbytes runs on CUDA
    and, from 0.46 on, on the CPU."""
    if kind == "none":
        return None
    if kind not in QUANTIZATIONS:
        raise ModelLoadError(f"model.quantization={kind!r}; valid: {', '.join(QUANTIZATIONS)}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            f"model.quantization={kind} needs bitsandbytes, which is not installed: pip install 'fedpeft[quant]'"
        ) from None
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[dtype],
    )


def autocast(device: torch.device, mixed_precision: str) -> contextlib.AbstractContextManager:
    """``train.mixed_precision``: forward passes under torch autocast in bf16 or fp16 (weights and the
    trainable tensors keep their dtype), or nothing for ``none``."""
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"train.mixed_precision={mixed_precision!r}; valid: {', '.join(MIXED_PRECISION)}")
    dtype = MIXED_PRECISION[mixed_precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# bitsandbytes' CPU kernels dequantise a 4-bit weight correctly only when each row is a whole number of
# quantisation blocks (checked against a reference NF4 dequantisation: with in_features 32, 48 or 96 the
# AVX-512 kernel returns wrong weights; 40 or 128 are right). One rule on every CPU keeps the verdict the
# same on every machine.
CPU_4BIT_RULE = "in_features a multiple of the {block}-value quantisation block"


def check_quantized_layers(model: torch.nn.Module, name: str, quantization: str, device: torch.device) -> None:
    """Refuse a 4-bit base whose quantised layers the CPU kernels cannot compute correctly (naming the layer,
    its size and the rule), and put every 4-bit layer on bitsandbytes' portable path.

    The portable path: bitsandbytes repacks a 4-bit weight for its AVX512-BF16 inference kernel the first time
    a layer runs in eval mode without gradients, on CPUs that have the instructions. That kernel computes in
    bfloat16 (other numbers than on a CPU without it), needs out_features divisible by 32, and the repacked
    weight breaks the next training pass. fedpeft evaluates and trains clients in turn, so every layer
    dequantises to the compute dtype instead, on every CPU."""
    import bitsandbytes as bnb

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    for _, module in layers:
        module.support_avx512bf16_for_cpu = False
    if quantization != "4bit" or device.type != "cpu":
        return
    bad = [(n, m) for n, m in layers if m.in_features % m.weight.blocksize]
    if bad:
        layer, module = bad[0]
        others = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        rule = CPU_4BIT_RULE.format(block=module.weight.blocksize)
        raise ModelLoadError(
            f"model.name={name!r} cannot be quantised to 4 bits on the CPU: layer {layer} has "
            f"in_features={module.in_features} (out_features={module.out_features}){others}; bitsandbytes' CPU "
            f"kernels need {rule}. Use model.quantization=8bit or none, or a CUDA GPU (model.device=cuda)"
        )


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None))


def load_base_model(
    name: str,
    dtype: str = "float32",
    head: str = "causal_lm",
    num_labels: int = 2,
    device: str = "cpu",
    quantization: str = "none",
) -> LoadedBase:
    """The frozen base model and tokenizer named by ``model.name``, on ``device``; a tokenizer without a
    pad token gets its end-of-sequence token as pad (labels mask padding, so this changes no loss).

    A text-generation task (head ``causal_lm``) on an encoder-decoder model (T5, CodeT5) loads the
    seq2seq head instead: the prompt goes to the encoder, the response is the decoder's target.
    ``quantization`` (8bit, 4bit) loads the linear weights through bitsandbytes and prepares the model for
    adapter training as peft does for QLoRA (norms and embeddings in float32)."""
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
    target = resolve_device(device)
    quant = quantization_config(quantization, dtype)
    placement = {"quantization_config": quant, "device_map": {"": target}} if quant is not None else {}
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
            model = AutoModelForSeq2SeqLM.from_pretrained(source, dtype=DTYPES[dtype], **placement)
        elif head == "causal_lm":
            model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], **placement)
        elif head == "embedding":
            model = AutoModel.from_pretrained(source, dtype=DTYPES[dtype], **placement)
        else:
            # The new classification head is initialised from the caller's torch RNG (seed it there).
            model = AutoModelForSequenceClassification.from_pretrained(
                source, dtype=DTYPES[dtype], num_labels=num_labels, pad_token_id=tokenizer.pad_token_id, **placement
            )
    except OSError as err:
        raise ModelLoadError(_unreachable(name, err)) from err
    if quant is None:
        model.to(target)
    else:
        from peft import prepare_model_for_kbit_training

        check_quantized_layers(model, name, quantization, target)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedBase(model=model, tokenizer=tokenizer, source=source, head=head)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward pass (transformers' non-reentrant checkpointing,
    which also replays dropout exactly, so the gradients are those of the plain pass)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(inner, "supports_gradient_checkpointing", False):
        model_type = getattr(getattr(inner, "config", None), "model_type", "?")
        raise ValueError(f"train.gradient_checkpointing: model type {model_type!r} does not support it; set it false")
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
