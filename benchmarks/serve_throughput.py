"""Throughput of ``fedpeft serve``: requests/s and generated tokens/s through the HTTP API with 1 and 8
concurrent clients, against a plain ``model.generate`` loop doing the same requests one by one.

A 1-round run of ``--model`` (default ``builtin:small``) is trained first, unless ``--run`` names a finished
run. Every setting answers the same ``--requests`` instruction prompts (the run's template applied) greedily
with at most ``--max-tokens`` new tokens each, on the run's ``global`` adapter; greedy decoding makes every
setting generate the same tokens, so the rates compare like for like. The server runs in this process on
127.0.0.1 (uvicorn in a thread, ``fedpeft.serving.api.serving``); clients are threads using the official
``openai`` package, each taking the next request as soon as its last one is answered. Tokens are those the
model produced (usage.completion_tokens; for the loop, new tokens up to EOS). Each setting is warmed up once.
``batches`` is how many ``generate`` calls the server's batcher made. torch runs ``--threads`` intra-op threads
(default 1: on a small shared machine more threads per process make every figure noisier, and a loaded
2-core machine made a 2-thread loop 16 times slower in one try).

    python benchmarks/serve_throughput.py                                   # builtin:small, 32 requests
    python benchmarks/serve_throughput.py --run runs/default-... --concurrency 1,4,16
"""

from __future__ import annotations

import argparse
import queue
import tempfile
import threading
import time
from pathlib import Path

import openai
import torch

from fedpeft.config import load_config
from fedpeft.experiment.run import run_experiment
from fedpeft.serving.adapters import ServedRun, load_run
from fedpeft.serving.api import make_app, serving
from fedpeft.serving.batching import encode_prompt

INSTRUCTIONS = [
    "Write a function that adds two numbers.",
    "Return the largest element of a list.",
    "Reverse a string.",
    "Count the vowels in a text.",
    "Check whether a number is prime.",
    "Merge two sorted lists into one sorted list.",
    "Compute the factorial of n.",
    "Remove duplicate items from a list, keeping their order.",
    "Parse a comma-separated line into a list of stripped fields.",
    "Return the n-th Fibonacci number.",
    "Flatten a list of lists.",
    "Convert a temperature from Celsius to Fahrenheit.",
]


def build_run(args: argparse.Namespace, out: Path) -> Path:
    overrides = [
        f"model.name={args.model}",
        "fl.rounds=1",
        "fl.clients=2",
        "fl.fraction=1.0",
        f"train.max_steps={args.steps}",
        f"data.max_rows={args.rows}",
        f"data.test_size={args.test_size}",
        "eval.every=0",
        f"output.dir={out}",
    ]
    run_dir, _ = run_experiment(load_config("default", overrides), quiet=True)
    return run_dir


def prompts_for(run: ServedRun, count: int) -> list[str]:
    return [run.format_prompt(f"{INSTRUCTIONS[i % len(INSTRUCTIONS)]} (case {i})") for i in range(count)]


def plain_loop(run: ServedRun, prompts: list[str], max_tokens: int) -> tuple[int, float]:
    """(tokens generated, seconds): ``model.generate`` on one prompt at a time, greedy."""
    tok = run.tokenizer
    eos = run.model.generation_config.eos_token_id or tok.eos_token_id
    tokens, began = 0, time.perf_counter()
    with run.use("global") as model, torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([encode_prompt(tok, prompt)], device=next(model.parameters()).device)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
            new = out[0, ids.shape[1] :].tolist()
            tokens += new.index(eos) + 1 if eos in new else len(new)
    return tokens, time.perf_counter() - began


def through_http(url: str, key: str, prompts: list[str], max_tokens: int, clients: int) -> tuple[int, float]:
    """(tokens generated, seconds): ``clients`` threads sending the prompts as completion requests."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
    todo: queue.Queue[str] = queue.Queue()
    for prompt in prompts:
        todo.put(prompt)
    counts: list[int] = []
    failures: list[BaseException] = []

    def work() -> None:
        while True:
            try:
                prompt = todo.get_nowait()
            except queue.Empty:
                return
            try:
                got = client.completions.create(model="global", prompt=prompt, max_tokens=max_tokens, temperature=0)
                counts.append(got.usage.completion_tokens)
            except BaseException as err:  # noqa: BLE001 - reported after the threads end
                failures.append(err)
                return

    threads = [threading.Thread(target=work) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - began
    if failures:
        raise failures[0]
    return sum(counts), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="A finished run to serve (default: train one).")
    parser.add_argument("--model", default="builtin:small", help="Base model of the run trained when no --run.")
    parser.add_argument("--steps", type=int, default=2, help="Local steps of the run trained.")
    parser.add_argument("--rows", type=int, default=200, help="data.max_rows of the run trained.")
    parser.add_argument("--test-size", type=int, default=20, help="data.test_size of the run trained.")
    parser.add_argument("--requests", type=int, default=32, help="Requests per setting.")
    parser.add_argument("--max-tokens", type=int, default=32, help="Most new tokens per request.")
    parser.add_argument("--concurrency", default="1,8", help="Concurrent clients, comma-separated.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="fedpeft-serve-bench-") as scratch:
        began = time.perf_counter()
        run_dir = args.run or build_run(args, Path(scratch))
        run = load_run(run_dir, args.device)
        prompts = prompts_for(run, args.requests)
        print(
            f"run {run_dir} ({run.config.model.name}, adapter global) on {args.device}, torch threads "
            f"{torch.get_num_threads()}; {len(prompts)} greedy requests, at most {args.max_tokens} new tokens each; "
            f"setup {time.perf_counter() - began:.1f} s"
        )
        print()
        print("| setting | clients | requests | tokens | seconds | requests/s | tokens/s | batches | vs plain loop |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        plain_loop(run, prompts[:1], args.max_tokens)
        tokens, seconds = plain_loop(run, prompts, args.max_tokens)
        base = tokens / seconds
        print(
            f"| plain model.generate loop | 1 | {len(prompts)} | {tokens} | {seconds:.2f} | "
            f"{len(prompts) / seconds:.2f} | {base:,.1f} | {len(prompts)} | 1.00 |",
            flush=True,
        )
        key = "bench"
        app = make_app(run, key)
        batcher = app.state.batcher
        with serving(app) as url:
            for clients in [int(c) for c in args.concurrency.split(",")]:
                through_http(url, key, prompts[:1], args.max_tokens, 1)
                before = batcher.batches
                tokens, seconds = through_http(url, key, prompts, args.max_tokens, clients)
                batches = batcher.batches - before
                label = f"fedpeft serve, {clients} client{'s' if clients > 1 else ''}"
                print(
                    f"| {label} | {clients} | {len(prompts)} | {tokens} | {seconds:.2f} | "
                    f"{len(prompts) / seconds:.2f} | {tokens / seconds:,.1f} | {batches} | "
                    f"{tokens / seconds / base:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
