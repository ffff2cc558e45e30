"""Memory and speed of local training under each memory/speed option of fedpeft.

One client round of the default recipe (the stdlib instruction task) per option, each option in its own
spawned process so its peak memory is its own:

- ``baseline``: the model in model.dtype, padded micro-batches;
- ``checkpointing``: train.gradient_checkpointing;
- ``packing``: train.packing (rows of data.max_length, no attention across documents);
- ``bf16`` / ``fp16``: train.mixed_precision;
- ``4bit`` / ``8bit``: model.quantization through bitsandbytes (4bit with LoRA is QLoRA).

Reported per option: seconds for the round's optimizer steps, tokens per second (the real, unpadded tokens
of the examples the round trained on), the bytes of the model's weights (a 4-bit weight counts its packed
bytes), peak memory over loading and the round (torch's peak allocation on a GPU, the process's peak
resident set on a CPU) and the training loss.

    python benchmarks/memory_speed.py                                   # builtin:small on this machine
    python benchmarks/memory_speed.py --options baseline,packing --steps 20
    python benchmarks/memory_speed.py --random-llama 1b --options baseline,4bit,8bit   # on a GPU

``--random-llama 300m|1b|7b`` builds a randomly initialised Llama of that size (TinyLlama's 1.1B shape for
``1b``, Llama-2-7B's for ``7b``) with the built-in tokenizer: speed and memory do not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

OPTIONS = {
    "baseline": [],
    "checkpointing": ["train.gradient_checkpointing=true"],
    "packing": ["train.packing=true"],
    "bf16": ["train.mixed_precision=bf16"],
    "fp16": ["train.mixed_precision=fp16"],
    "4bit": ["model.quantization=4bit"],
    "8bit": ["model.quantization=8bit"],
}
RANDOM_LLAMAS = {
    # hidden, intermediate, layers, heads, kv heads, vocab
    "300m": (1024, 2816, 20, 16, 4, 32000),
    "1b": (2048, 5632, 22, 32, 4, 32000),  # TinyLlama-1.1B's shape
    "7b": (4096, 11008, 32, 32, 32, 32000),  # Llama-2-7B's shape
}


def build_random_llama(size: str, where: Path, dtype: str) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fedpeft.models.builtin import build_builtin

    hidden, intermediate, layers, heads, kv_heads, vocab = RANDOM_LLAMAS[size]
    tokenizer = AutoTokenizer.from_pretrained(build_builtin("builtin:small"))
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=max(vocab, len(tokenizer)),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    # Initialised on the GPU when there is one (a 7B model takes minutes to initialise on a CPU), in the
    # requested dtype; the child processes load it from disk like any checkpoint.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(where)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    tokenizer.save_pretrained(where)
    return where


def _measure(overrides: list[str], conn) -> None:
    """Child process: set up the run, train client 0 for one round, report figures."""
    import torch

    from fedpeft.config import load_config
    from fedpeft.experiment.run import setup

    def peak_mb() -> float:
        if torch.cuda.is_initialized():
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def weights_mb(model) -> float:
        """Bytes the model's parameters and buffers occupy (a 4-bit weight counts its packed bytes): the
        resident set cannot show it, as weights may stay memory-mapped from the file until first used."""
        tensors = [*model.parameters(), *model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    try:
        with tempfile.TemporaryDirectory() as out:
            config = load_config("default", [*overrides, f"output.dir={out}"])
            state = setup(config, Path(out))
            loaded_mb = weights_mb(state.model)
            examples = state.runtime.client_examples[0]
            args = state.runtime.args
            # Warm-up step (allocator, kernels), then the measured round.
            state.runtime.train_round(0, [0], state.global_state)
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            (update,) = state.runtime.train_round(1, [0], state.global_state)
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            mean_len = sum(len(e.input_ids) for e in examples) / len(examples)
            trained_examples = update.num_steps * args.batch_size  # max_steps is set: whole batches
            conn.send(
                {
                    "seconds": seconds,
                    "steps": update.num_steps,
                    "tokens_per_second": trained_examples * mean_len / seconds,
                    "loaded_mb": loaded_mb,
                    "peak_mb": peak_mb(),
                    "train_loss": update.train_loss,
                    "device": str(next(state.model.parameters()).device),
                }
            )
    except Exception as err:  # reported in the table instead of ending the benchmark
        conn.send({"error": f"{err.__class__.__name__}: {err}"})


def measure(overrides: list[str]) -> dict:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_measure, args=(overrides, child))
    process.start()
    child.close()
    try:
        return parent.recv()
    except EOFError:
        return {"error": f"process died (exit code {process.exitcode}; out of memory?)"}
    finally:
        process.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:small", help="model.name (ignored with --random-llama)")
    parser.add_argument("--random-llama", choices=sorted(RANDOM_LLAMAS), help="a random Llama of this size")
    parser.add_argument("--dtype", default="float32", help="model.dtype of the base")
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, of: {', '.join(OPTIONS)}")
    parser.add_argument("--method", default="lora", help="peft.method")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps in the measured round")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--set", action="append", default=[], help="extra config override (repeatable)")
    args = parser.parse_args()
    unknown = [o for o in args.options.split(",") if o not in OPTIONS]
    if unknown:
        sys.exit(f"unknown --options {unknown}; valid: {', '.join(OPTIONS)}")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.random_llama:
            model = str(build_random_llama(args.random_llama, Path(tmp) / "model", args.dtype))
        common = [
            f"model.name={model}",
            f"model.dtype={args.dtype}",
            f"peft.method={args.method}",
            f"train.max_steps={args.steps}",
            f"train.batch_size={args.batch_size}",
            f"train.micro_batch_size={args.micro_batch_size}",
            f"data.max_length={args.max_length}",
            "eval.every=0",
            *args.set,
        ]
        print(
            f"model {args.random_llama or args.model} ({args.dtype}), peft.method={args.method}, {args.steps} steps "
            f"of {args.batch_size} examples (micro-batches of {args.micro_batch_size}), max_length {args.max_length}"
        )
        print("| option | device | seconds | tokens/s | model weights (MB) | peak memory (MB) | train loss |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        results = {}
        for option in args.options.split(","):
            r = results[option] = measure([*common, *OPTIONS[option]])
            if "error" in r:
                print(f"| {option} | - | - | - | - | - | {r['error'][:120]} |", flush=True)
                continue
            print(
                f"| {option} | {r['device']} | {r['seconds']:.2f} | {r['tokens_per_second']:,.0f} | "
                f"{r['loaded_mb']:,.0f} | {r['peak_mb']:,.0f} | {r['train_loss']:.4f} |",
                flush=True,
            )
        print(json.dumps(results))


if __name__ == "__main__":
    main()
