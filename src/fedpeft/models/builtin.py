"""Built-in base models that exist with no network: a BPE tokenizer trained on the stdlib corpus and a
Llama-architecture causal LM built from a config.

Notable choices:
- One name picks a size (``builtin:tiny`` for the demo, ``builtin:micro`` for tests), as nanochat does.
- Until a pretrained model ships (issue 3), weights are randomly initialised from a fixed seed, so every
  machine builds the same model. The result is written once as an ordinary Hugging Face model
  directory under the cache, so peft adapters point at a real path that ``from_pretrained`` loads.
- The tokenizer keeps distinct pad and end-of-sequence tokens so that end-of-sequence is learned.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from fedpeft.paths import cache_dir

BUILTIN_PREFIX = "builtin:"
BUILD_VERSION = 1
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


@dataclass(frozen=True)
class BuiltinSize:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int


BUILTIN_SIZES: dict[str, BuiltinSize] = {
    "micro": BuiltinSize(512, 32, 64, 1, 2, 512),
    "tiny": BuiltinSize(4096, 128, 352, 2, 4, 1024),
}


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + name for name in BUILTIN_SIZES]


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from fedpeft.data.stdlib_corpus import load_stdlib_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((rec.code for rec in load_stdlib_corpus()), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=10**6
    )


def build_builtin(name: str, seed: int = 0) -> Path:
    """Build (once) and return the directory of built-in model ``name`` (e.g. ``builtin:tiny``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    size_name = name.removeprefix(BUILTIN_PREFIX)
    if size_name not in BUILTIN_SIZES:
        raise ValueError(f"unknown built-in model {name!r}; valid: {', '.join(builtin_names())}")
    size = BUILTIN_SIZES[size_name]
    out = cache_dir() / "models" / f"{size_name}-v{BUILD_VERSION}-seed{seed}"
    if (out / "fedpeft_builtin.json").exists():
        return out
    tokenizer = _train_tokenizer(size.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    # Init from a private generator state so the global torch RNG is left as the caller had it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    provenance = {"name": name, "size": asdict(size), "seed": seed, "weights": "random init", "version": 1}
    (tmp / "fedpeft_builtin.json").write_text(json.dumps(provenance, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
