"""Built-in base models that exist with no network: Llama-architecture causal LMs with a byte-level BPE
tokenizer trained on the stdlib corpus.

Notable choices:
- One name picks a size, as nanochat does. ``builtin:small`` is pretrained by ``fedpeft pretrain`` and
  shipped as package data with its model card (``models/pretrained/small``); ``builtin:tiny`` and
  ``builtin:micro`` (and ``builtin:micro64``, its 64-wide twin that 4-bit CPU kernels take) are seeded
  random inits for benchmarks and tests, built once into the cache.
- The seed recipes' offline variants keep their model's architecture family: ``builtin:bert``,
  ``builtin:distilbert``, ``builtin:t5`` and ``builtin:gpt2`` are seeded random inits of that shape at the
  ``tiny`` scale (CodeBERT, FedKD's DistilBERT, CodeT5, CodeGPT/GPT-2 stand in), sharing ``builtin:small``'s
  tokenizer so their inputs are the pretrained model's. Random weights: they show that a recipe runs and how
  methods order, not the published scores.
- Random-init builds train their tokenizer on the corpus 'train' split only, like the pretrained model.
  The corpus belongs to the data layer, above this one, so its texts are passed in (``tokenizer_texts``)
  or registered once with :func:`set_tokenizer_corpus` by the package that composes the layers.
- Either way the model is an ordinary Hugging Face model directory, so peft adapters point at a real
  path that ``from_pretrained`` loads.
- The tokenizer keeps distinct pad and end-of-sequence tokens so that end-of-sequence is learned.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from fedpeft.paths import cache_dir

BUILTIN_PREFIX = "builtin:"
BUILD_VERSION = 2
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")

TextSource = Callable[[], Iterable[str]]
"""Gives the texts a random-init built-in trains its tokenizer on (called only when one is built)."""
_tokenizer_corpus: TextSource | None = None


def set_tokenizer_corpus(texts: TextSource) -> None:
    """Register where random-init built-ins train their tokenizer when no ``tokenizer_texts`` is passed:
    the code of the stdlib corpus's train split (``fedpeft/__init__.py`` registers it)."""
    global _tokenizer_corpus
    _tokenizer_corpus = texts


@dataclass(frozen=True)
class BuiltinSize:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    pretrained: bool
    """Shipped pretrained (package data) rather than built as a random init."""
    family: str = "llama"
    """Architecture: llama (tokenizer trained at build time) or a stand-in shape (bert, distilbert, t5, gpt2)."""


BUILTIN_SIZES: dict[str, BuiltinSize] = {
    "micro": BuiltinSize(512, 32, 64, 1, 2, 512, pretrained=False),
    # micro with every linear layer's in_features a multiple of 64: the smallest model 4-bit CPU kernels take.
    "micro64": BuiltinSize(512, 64, 128, 1, 2, 512, pretrained=False),
    "tiny": BuiltinSize(4096, 128, 352, 2, 4, 1024, pretrained=False),
    "small": BuiltinSize(4096, 192, 512, 4, 6, 1024, pretrained=True),
    # Stand-ins for the seed recipes' offline variants (architecture family kept, tiny scale, random init).
    "bert": BuiltinSize(4096, 128, 352, 2, 4, 1024, pretrained=False, family="bert"),
    "distilbert": BuiltinSize(4096, 128, 352, 2, 4, 1024, pretrained=False, family="distilbert"),
    "t5": BuiltinSize(4096, 128, 352, 2, 4, 1024, pretrained=False, family="t5"),
    "gpt2": BuiltinSize(4096, 128, 352, 2, 4, 1024, pretrained=False, family="gpt2"),
}


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + name for name in BUILTIN_SIZES]


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def pretrained_dir(size_name: str) -> Path:
    return Path(str(resources.files("fedpeft.models") / "pretrained" / size_name))


def train_tokenizer(vocab_size: int, texts: Iterable[str]):
    """A byte-level BPE tokenizer with <pad>, <s> and </s>, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=10**6
    )


def llama_config(size: BuiltinSize, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
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


def stand_in_model(size: BuiltinSize, tokenizer):
    """A random-init model of ``size.family``'s architecture (bert, distilbert, t5 or gpt2) at ``size``'s scale,
    in the class whose checkpoint every fedpeft head loads from (masked LM, seq2seq LM, causal LM)."""
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
    ids["eos_token_id"] = tokenizer.eos_token_id
    vocab, width, inner = len(tokenizer), size.hidden_size, size.intermediate_size
    layers, heads, positions = size.num_hidden_layers, size.num_attention_heads, size.max_position_embeddings
    if size.family == "bert":
        config = BertConfig(
            vocab_size=vocab, hidden_size=width, intermediate_size=inner, num_hidden_layers=layers,
            num_attention_heads=heads, max_position_embeddings=positions, **ids,
        )  # fmt: skip
        return BertForMaskedLM(config)
    if size.family == "distilbert":
        config = DistilBertConfig(
            vocab_size=vocab, dim=width, hidden_dim=inner, n_layers=layers, n_heads=heads,
            max_position_embeddings=positions, **ids,
        )  # fmt: skip
        return DistilBertForMaskedLM(config)
    if size.family == "t5":
        config = T5Config(
            vocab_size=vocab, d_model=width, d_kv=width // heads, d_ff=inner, num_layers=layers, num_heads=heads,
            decoder_start_token_id=tokenizer.pad_token_id, **ids,
        )  # fmt: skip
        return T5ForConditionalGeneration(config)
    if size.family == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=width, n_inner=inner, n_layer=layers, n_head=heads, n_positions=positions, **ids
        )
        return GPT2LMHeadModel(config)
    raise ValueError(f"unknown architecture family {size.family!r}; valid: llama, bert, distilbert, t5, gpt2")


def build_builtin(name: str, seed: int = 0, tokenizer_texts: TextSource | None = None) -> Path:
    """The model directory of built-in model ``name`` (e.g. ``builtin:small``), building it once if it is
    a random-init size, with a tokenizer trained on ``tokenizer_texts`` (default: the registered corpus)."""
    import torch
    from transformers import LlamaForCausalLM

    size_name = name.removeprefix(BUILTIN_PREFIX)
    if size_name not in BUILTIN_SIZES:
        raise ValueError(f"unknown built-in model {name!r}; valid: {', '.join(builtin_names())}")
    size = BUILTIN_SIZES[size_name]
    if size.pretrained:
        path = pretrained_dir(size_name)
        if not (path / "model.safetensors").exists():
            raise FileNotFoundError(
                f"{name} has no shipped weights in {path}; create them with `fedpeft pretrain --size {size_name}`"
            )
        return path
    out = cache_dir() / "models" / f"{size_name}-v{BUILD_VERSION}-seed{seed}"
    if (out / "fedpeft_builtin.json").exists():
        return out
    if size.family != "llama":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(pretrained_dir("small"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = stand_in_model(size, tokenizer)
        return _save_built(out, model, tokenizer, name, size, seed)
    texts = tokenizer_texts or _tokenizer_corpus
    if texts is None:
        raise RuntimeError(
            f"{name} is built on first use and trains its tokenizer on a corpus, but none is registered "
            "(fedpeft.models.builtin.set_tokenizer_corpus; importing fedpeft registers the stdlib corpus)"
        )
    tokenizer = train_tokenizer(size.vocab_size, texts())
    # Init from a private generator state so the global torch RNG is left as the caller had it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama_config(size, tokenizer))
    return _save_built(out, model, tokenizer, name, size, seed)


def _save_built(out: Path, model, tokenizer, name: str, size: BuiltinSize, seed: int) -> Path:
    """Write ``model`` and ``tokenizer`` to ``out`` atomically (a temporary sibling renamed into place)."""
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    provenance = {"name": name, "size": asdict(size), "seed": seed, "weights": "random init", "version": BUILD_VERSION}
    (tmp / "fedpeft_builtin.json").write_text(json.dumps(provenance, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
