"""Speed of code evaluation by execution: (a) sampling completions, (b) running them in the sandbox.

(a) Generated tokens per second of a model (default ``builtin:small``) on the first ``--problems`` HumanEval
prompts through ``fedpeft.models.generate.make_ask`` with HumanEval's stop sequences: batched (up to
``--batch-size`` sequences together) against one prompt at a time, for greedy n=1 and sampled n=5. Tokens
are those the model really produced (up to EOS or a stop sequence); each setting is warmed up once on one
prompt first. The CPU runs torch on ``--threads`` threads (default 1).

(b) Sandboxed samples per second: the canonical solutions of HumanEval's 164 problems (prompt, solution,
tests), as the ``humaneval`` suite builds them, through ``fedpeft.evaluation.sandbox.run_programs`` with one
worker and with one per CPU, under each isolation layer available here. Every canonical program should pass.

    python benchmarks/code_eval.py                                 # builtin:small, 16 problems, 164 programs
    python benchmarks/code_eval.py --problems 4 --max-new-tokens 32 --programs 20
    python benchmarks/code_eval.py --device cuda --problems 64 --batch-size 128
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

from fedpeft.evaluation.sandbox import ISOLATIONS, SandboxLimits, isolation_available, run_programs
from fedpeft.evaluation.suites.base import HUMANEVAL_STOP, format_prompt
from fedpeft.evaluation.suites.humaneval import HumanEval
from fedpeft.models.base import load_base_model
from fedpeft.models.generate import make_ask

SETTINGS = {"greedy n=1": (1, 0.0), "sampled n=5": (5, 0.8)}
"""(samples per prompt, temperature) of each generation setting."""


def generation_table(args: argparse.Namespace) -> None:
    loaded = load_base_model(args.model, device=args.device)
    problems = HumanEval().problems(args.seed)[: args.problems]
    prompts = [format_prompt(p, "plain") for p in problems]
    device = next(loaded.model.parameters()).device
    print(
        f"(a) generation: model {args.model} on {device}, {len(prompts)} HumanEval prompts, "
        f"at most {args.max_new_tokens} new tokens, HumanEval stop sequences"
    )
    print()
    print("| generation | batch size | sequences | tokens | seconds | tokens/s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (n, temperature) in SETTINGS.items():
        base = None
        # One prompt at a time first: its rate is the speed-up's reference.
        for label, batch_size in (("one prompt at a time", n), ("batched", max(args.batch_size, n))):
            ask = make_ask(loaded.model, loaded.tokenizer, args.max_new_tokens, batch_size=batch_size, seed=args.seed)
            ask(prompts[:1], n, temperature, HUMANEVAL_STOP)
            ask.generated_tokens, ask.seconds = 0, 0.0
            ask(prompts, n, temperature, HUMANEVAL_STOP)
            rate = ask.tokens_per_second
            base = base or rate
            print(
                f"| {name}, {label} | {batch_size} | {len(prompts) * n} | {ask.generated_tokens} | "
                f"{ask.seconds:.2f} | {rate:,.1f} | {rate / base:.2f} |",
                flush=True,
            )


def sandbox_table(args: argparse.Namespace) -> None:
    suite = HumanEval()
    problems = suite.problems(args.seed)[: args.programs]
    programs = [suite.program(p, p.canonical) for p in problems]
    cpus = os.cpu_count() or 1
    limits = SandboxLimits(timeout_s=10.0, cpu_s=10, memory_mb=1024)
    print(f"(b) sandbox: {len(programs)} canonical HumanEval programs, 1 worker vs {cpus} (the CPU count)")
    print()
    print("| isolation, workers | programs | passed | seconds | samples/s | speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    for layer in ISOLATIONS:
        if not isolation_available(layer):
            print(f"| {layer}: not available here | - | - | - | - | - |", flush=True)
            continue
        base = None
        for workers in sorted({1, cpus}):
            started = time.perf_counter()
            results = run_programs(programs, limits, workers=workers, isolation=layer)
            seconds = time.perf_counter() - started
            rate = len(programs) / seconds
            base = base or rate
            print(
                f"| {layer} x{workers} | {len(programs)} | {sum(r.passed for r in results)} | {seconds:.2f} | "
                f"{rate:.1f} | {rate / base:.2f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--device", default="auto", help="model.device: auto, cpu, cuda, ...")
    parser.add_argument("--problems", type=int, default=16, help="HumanEval prompts to generate for (1..164)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="sequences generated together when batched")
    parser.add_argument("--programs", type=int, default=164, help="canonical programs run in the sandbox (1..164)")
    parser.add_argument("--parts", default="generation,sandbox", help="comma-separated, of: generation, sandbox")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (a model this small gains nothing from more, and on a busy machine they contend)",
    )
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in ("generation", "sandbox")]
    if unknown:
        parser.error(f"unknown --parts {unknown}; valid: generation, sandbox")
    for name in ("problems", "programs"):
        if not 1 <= getattr(args, name) <= 164:
            parser.error(f"--{name}={getattr(args, name)}; valid: 1..164")
    torch.set_num_threads(args.threads)
    # The sandbox says once which isolation is in force; this benchmark names every layer it runs anyway.
    warnings.filterwarnings("ignore", message="bubblewrap .* is not available", category=RuntimeWarning)
    if "generation" in parts:
        generation_table(args)
        print()
    if "sandbox" in parts:
        sandbox_table(args)


if __name__ == "__main__":
    main()
