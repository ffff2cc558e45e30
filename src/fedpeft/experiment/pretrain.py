"""Pretrain the built-in code model: a small Llama-architecture LM and its BPE tokenizer, trained on the
'train' split of the stdlib corpus (``fedpeft pretrain``).

Notable choices:
- Only 'train' functions are seen, by the tokenizer too; 'valid' gives the held-out perplexity in the
  model card and 'test' is never read, so offline tasks may evaluate on valid/test without leakage.
- No packing across documents: each function (chunked at ``seq_len``) is its own sequence; batches are
  built from length-sorted buckets to keep padding small, then shuffled.
- Warm-up then cosine decay to 10% of the peak LR. ``--max-minutes`` stops early at a clean step and still
  writes the model and its card (which then says so).
- Weights are written as float32 safetensors with a model card (README.md) and ``fedpeft_builtin.json``
  provenance, in an ordinary Hugging Face model directory.
"""

from __future__ import annotations

import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedpeft.data.stdlib_corpus import corpus_split, load_stdlib_corpus
from fedpeft.models.builtin import BUILTIN_SIZES, BuiltinSize, llama_config, train_tokenizer
from fedpeft.seeding import numpy_rng, torch_rng_scope
from fedpeft.tensors.batching import pad_sequences


@dataclass(frozen=True)
class PretrainArgs:
    size: str = "small"
    """Built-in size to pretrain (see fedpeft.models.builtin.BUILTIN_SIZES)."""
    steps: int = 3000
    """Optimizer steps."""
    tokens_per_batch: int = 8192
    """Upper bound on (padded) tokens in one optimizer step."""
    seq_len: int = 256
    """Functions longer than this are cut into several sequences."""
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    seed: int = 0
    max_minutes: float | None = None
    """Stop early (cleanly) after this many minutes."""
    threads: int | None = None
    """torch intra-op threads (default: torch's choice)."""


def _sequences(texts: list[str], tokenizer, seq_len: int) -> list[list[int]]:
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    body = seq_len - 2
    for doc in ids:
        for i in range(0, len(doc), body):
            out.append([tokenizer.bos_token_id, *doc[i : i + body], tokenizer.eos_token_id])
    return out


def _batches(seqs: list[list[int]], tokens_per_batch: int, rng: np.random.Generator) -> list[list[int]]:
    """Index batches of similar-length sequences, each at most ``tokens_per_batch`` padded tokens."""
    order = sorted(range(len(seqs)), key=lambda i: (len(seqs[i]), i))
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, len(seqs[i]))
        if current and longest_if_added * (len(current) + 1) > tokens_per_batch:
            batches.append(current)
            current, longest_if_added = [], len(seqs[i])
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return [batches[j] for j in rng.permutation(len(batches))]


def _loss_sum(model, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


@torch.no_grad()
def held_out_loss(model, seqs: list[list[int]], pad_id: int, tokens_per_batch: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for batch in _batches(seqs, tokens_per_batch, np.random.default_rng(0)):
        loss, n = _loss_sum(model, *pad_sequences([seqs[i] for i in batch], pad_id))
        total, count = total + float(loss), count + n
    model.train()
    return total / max(count, 1)


def pretrain(args: PretrainArgs, out: Path, log: Callable[[str], None] = print) -> dict:
    """Train tokenizer and model from scratch; write a Hugging Face model directory with a model card."""
    from transformers import LlamaForCausalLM

    from fedpeft.experiment.setup import quiet_libraries

    quiet_libraries()
    llama_sizes = [name for name, size in BUILTIN_SIZES.items() if size.family == "llama"]
    if args.size not in llama_sizes:
        raise ValueError(f"unknown size {args.size!r}; valid: {', '.join(llama_sizes)} (Llama-architecture sizes)")
    if args.threads:
        torch.set_num_threads(args.threads)
    size: BuiltinSize = BUILTIN_SIZES[args.size]
    started = time.perf_counter()
    records = load_stdlib_corpus()
    train_texts = [r.code for r in records if corpus_split(r) == "train"]
    valid_texts = [r.code for r in records if corpus_split(r) == "valid"]
    tokenizer = train_tokenizer(size.vocab_size, train_texts)
    train_seqs = _sequences(train_texts, tokenizer, args.seq_len)
    valid_seqs = _sequences(valid_texts, tokenizer, args.seq_len)
    train_tokens = sum(len(s) for s in train_seqs)
    log(f"corpus: {len(train_texts)} train functions ({train_tokens} tokens), {len(valid_texts)} valid functions")

    with torch_rng_scope(args.seed, "init"):
        model = LlamaForCausalLM(llama_config(size, tokenizer))
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f} M parameters")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    rng = numpy_rng(args.seed, "train")
    pad = tokenizer.pad_token_id
    batches: list[list[int]] = []
    model.train()
    step, tokens_seen, recent = 0, 0, []
    stopped_early = False
    with torch_rng_scope(args.seed, "train"):
        while step < args.steps:
            if not batches:
                batches = _batches(train_seqs, args.tokens_per_batch, rng)
            batch = batches.pop()
            if step < args.warmup_steps:
                factor = (step + 1) / args.warmup_steps
            else:
                progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
                factor = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
            for group in optimizer.param_groups:
                group["lr"] = args.lr * factor
            loss_sum, n = _loss_sum(model, *pad_sequences([train_seqs[i] for i in batch], pad))
            (loss_sum / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += n
            recent.append(float(loss_sum.detach()) / n)
            if step % 50 == 0 or step == args.steps:
                elapsed = time.perf_counter() - started
                log(
                    f"step {step}/{args.steps} loss {np.mean(recent[-50:]):.4f} tokens {tokens_seen} {elapsed / 60:.1f} min"
                )
            if args.max_minutes is not None and time.perf_counter() - started > 60 * args.max_minutes:
                stopped_early = step < args.steps
                break
    valid_loss = held_out_loss(model, valid_seqs, pad, args.tokens_per_batch)
    card = {
        "name": f"builtin:{args.size}",
        "architecture": "LlamaForCausalLM",
        "size": asdict(size),
        "parameters": n_params,
        "train_functions": len(train_texts),
        "train_tokens_per_epoch": train_tokens,
        "tokens_seen": tokens_seen,
        "steps": step,
        "steps_planned": args.steps,
        "stopped_early": stopped_early,
        "final_train_loss": float(np.mean(recent[-50:])),
        "valid_loss": valid_loss,
        "valid_perplexity": math.exp(valid_loss),
        "seed": args.seed,
        "args": asdict(args),
        "command": "fedpeft pretrain " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wall_minutes": round((time.perf_counter() - started) / 60, 1),
        "weights": "pretrained",
    }
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "fedpeft_builtin.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(model_card(card))
    log(f"valid loss {valid_loss:.4f} (perplexity {math.exp(valid_loss):.2f}); written to {out}")
    return card


def model_card(card: dict) -> str:
    return f"""# {card["name"]}: a small Python code model pretrained by fedpeft

A {card["parameters"] / 1e6:.2f} M-parameter Llama-architecture causal LM with its own byte-level BPE
tokenizer ({card["size"]["vocab_size"]} tokens), trained from scratch on the documented functions of the
Python {card["python"]} standard library that fall in the corpus 'train' split (90% of functions, chosen by
a hash of their qualified name). The 'valid' (5%) and 'test' (5%) functions were never seen, by the model
or the tokenizer; fedpeft's offline tasks evaluate on them.

| | |
| --- | --- |
| layers / hidden / heads / MLP | {card["size"]["num_hidden_layers"]} / {card["size"]["hidden_size"]} / {card["size"]["num_attention_heads"]} / {card["size"]["intermediate_size"]} |
| training functions | {card["train_functions"]} ({card["train_tokens_per_epoch"]} tokens per epoch) |
| steps | {card["steps"]} of {card["steps_planned"]} planned{" (stopped early by --max-minutes)" if card["stopped_early"] else ""} |
| tokens seen | {card["tokens_seen"]} |
| final training loss | {card["final_train_loss"]:.4f} nats/token (mean of the last 50 steps) |
| held-out loss / perplexity ('valid' functions) | {card["valid_loss"]:.4f} / {card["valid_perplexity"]:.2f} |
| seed | {card["seed"]} |
| command | `{card["command"]}` |
| torch / wall time | {card["torch"]} / {card["wall_minutes"]} min |

It is a toy by modern standards: it completes Python idioms, not programs. Its purpose is to make
federated results on the offline tasks mean something with no download.
"""
