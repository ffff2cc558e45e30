"""Per-round cost of the Flower runtimes against the local one: the same job on ``local``, ``flower-sim``
(Flower's Simulation Engine, Ray) and ``flower-deployment`` (a SuperLink and one SuperNode per client on
127.0.0.1, started here with fedpeft's helpers and stopped at the end).

One client per round (``fl.fraction`` picks one of two), so every runtime does the same work per round and
no runtime gains from training clients in parallel. Per runtime: the median wall seconds of a round
(training, transfer, aggregation, checkpoint; evaluation only in the last round, which is left out), over
the rounds after the first (warm-up), and its excess over ``local``. The final adapters are compared too.

    python benchmarks/flower_overhead.py                       # builtin:small, 8 rounds of 4 steps
    python benchmarks/flower_overhead.py --model builtin:micro --rounds 6
    python benchmarks/flower_overhead.py --model builtin:micro --rounds 4 --steps 1 \
        --runtimes local,flower-deployment --set peft.r=73728    # 160 MB per message, a 7B LoRA's size

The table also gives each message's adapter size (what a client downloads and uploads per round).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

RUNTIMES = ("local", "flower-sim", "flower-deployment")


def round_seconds(run_dir: Path, rounds: int) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_round = {r["round"]: r["seconds"] for r in records if r.get("type") == "round" and r["round"] >= 1}
    return [by_round[r] for r in range(2, rounds)]  # after the warm-up round, before the evaluated last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per client round")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a config override (repeatable)")
    args = parser.parse_args()
    if args.rounds < 4:
        parser.error("--rounds must be at least 4 (one warm-up, one evaluated, two measured)")

    from safetensors.torch import load_file

    from fedpeft.config import load_config
    from fedpeft.experiment.run import run_experiment
    from fedpeft.testing import LoopbackFederation

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            f"model.name={args.model}",
            "fl.clients=2",
            "fl.fraction=0.5",
            f"fl.rounds={args.rounds}",
            f"train.max_steps={args.steps}",
            "eval.every=0",
            "eval.clients=false",
            f"output.dir={tmp}/runs",
            *args.overrides,
        ]
        for runtime in args.runtimes.split(","):
            federation = LoopbackFederation(Path(tmp)) if runtime == "flower-deployment" else None
            extra = [f"runtime={runtime}"]
            try:
                if federation is not None:
                    federation.superlink()
                    for i in range(2):
                        federation.supernode(i, 2)
                    extra.append(f"flower.superlink={federation.address}")
                run_dir, summary = run_experiment(load_config("default", [*common, *extra]), quiet=True)
            finally:
                if federation is not None:
                    federation.stop()
            seconds = round_seconds(run_dir, args.rounds)
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            sizes = [r["bytes_up"] for r in records if r.get("type") == "client"]
            results[runtime] = {"median": statistics.median(seconds), "rounds": seconds, "dir": run_dir}
            results[runtime] |= {"mb": max(sizes) / 1e6, "rss": summary["peak_rss_mb"]}
            print(f"{runtime}: rounds 2..{args.rounds - 1} seconds {[round(s, 2) for s in seconds]}", flush=True)
        base = results.get("local")
        print(
            f"\nmodel {args.model} {' '.join(args.overrides)}, one client per round, {args.steps} steps per client round"
        )
        print(
            "| runtime | message MB | median round (s) | overhead vs local (s) | max abs adapter difference vs local |"
        )
        print("| --- | --- | --- | --- | --- |")
        for runtime, r in results.items():
            over = f"{r['median'] - base['median']:+.2f}" if base else "-"
            diff = "-"
            if base:
                a = load_file(base["dir"] / "adapter" / "adapter_model.safetensors")
                b = load_file(r["dir"] / "adapter" / "adapter_model.safetensors")
                diff = f"{max(float((a[k] - b[k]).abs().max()) for k in a):.2e}"
            print(f"| {runtime} | {r['mb']:.1f} | {r['median']:.2f} | {over} | {diff} |")


if __name__ == "__main__":
    main()
