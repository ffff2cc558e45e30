"""Per-round cost of the Flower runtimes against the local one: the same job on ``local``, ``flower-sim``
(Flower's Simulation Engine, Ray) and ``flower-deployment`` (a SuperLink and one SuperNode per client on
127.0.0.1, started here with fedpeft's helpers as ``fedpeft supernode`` starts them, with a node worker, and
stopped at the end); ``flower-deployment-no-worker`` (not run by default) is the same deployment with
``fedpeft supernode --no-worker`` (Flower's fresh ClientApp process per message does everything).

One client per round (``fl.fraction`` picks one of two), so every runtime does the same work per round and
no runtime gains from training clients in parallel. Per runtime: the median wall seconds of a round
(training, transfer, aggregation, checkpoint; evaluation only in the last round, which is left out), over
the rounds after the first (warm-up), and its excess over ``local``. The final adapters are compared too.

    python benchmarks/flower_overhead.py                       # builtin:small, 8 rounds of 4 steps
    python benchmarks/flower_overhead.py --model builtin:micro --rounds 6
    python benchmarks/flower_overhead.py --model builtin:micro --rounds 4 --steps 1 \
        --runtimes local,flower-deployment --set peft.r=73728    # 160 MB per message, a 7B LoRA's size

The table also gives each message's adapter size (what a client downloads and uploads per round). A second
table gives the first round apart (start-up: a node's first round builds the run there) and peak RSS: this
process's for local and flower-sim, and for a deployment each node process's (sampled every 0.2 s; Linux's
VmHWM where readable), the largest over the nodes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
from pathlib import Path

RUNTIMES = ("local", "flower-sim", "flower-deployment")
DEPLOYMENTS = {"flower-deployment": True, "flower-deployment-no-worker": False}
"""Deployment runtimes of this benchmark: whether their SuperNodes run a node worker."""
ROLES = {
    "fedpeft.flower_client worker": "node worker",
    "flwr-clientapp": "flwr-clientapp (per message)",
    "flower-superexec": "flower-superexec",
    "fedpeft.deploy.node_loop": "flower-supernode",
    "fedpeft.cli supernode": "fedpeft supernode",
}
"""Node processes by a mark in their command line (first match)."""


def peak_rss_mb(proc) -> float:
    """A process's peak resident set (VmHWM) in MB where Linux reports it, else its current RSS."""
    try:
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return proc.memory_info().rss / 2**20


class NodeMemory:
    """Samples the peak RSS of each SuperNode's processes by role, until stopped."""

    def __init__(self, nodes: list) -> None:
        self.nodes, self.peaks = nodes, {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        import psutil

        while not self.done.wait(0.2):
            for i, node in enumerate(self.nodes):
                try:
                    procs = [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
                except psutil.Error:
                    continue
                for proc in procs:
                    try:
                        text = " ".join(proc.cmdline())
                        role = next((r for mark, r in ROLES.items() if mark in text), None)
                        if role is not None:
                            key = (i, role)
                            self.peaks[key] = max(self.peaks.get(key, 0.0), peak_rss_mb(proc))
                    except psutil.Error:
                        continue

    def stop(self) -> dict[str, float]:
        """{role: largest peak over the nodes}."""
        self.done.set()
        self.thread.join()
        out: dict[str, float] = {}
        for (_, role), mb in self.peaks.items():
            out[role] = max(out.get(role, 0.0), mb)
        return out


def round_seconds(run_dir: Path, rounds: int) -> tuple[float, list[float]]:
    """The first round's seconds, and those of the rounds after it but the evaluated last."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_round = {r["round"]: r["seconds"] for r in records if r.get("type") == "round" and r["round"] >= 1}
    return by_round[1], [by_round[r] for r in range(2, rounds)]  # after the warm-up round, before the last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per client round")
    parser.add_argument(
        "--runtimes",
        default=",".join(RUNTIMES),
        help="comma-separated, of local, flower-sim, flower-deployment, flower-deployment-no-worker",
    )
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
            deployed = runtime in DEPLOYMENTS
            federation = LoopbackFederation(Path(tmp) / runtime) if deployed else None
            extra = [f"runtime={'flower-deployment' if deployed else runtime}"]
            memory = None
            try:
                if federation is not None:
                    federation.workdir.mkdir()
                    federation.superlink()
                    nodes = [federation.supernode(i, 2, worker=DEPLOYMENTS[runtime]) for i in range(2)]
                    memory = NodeMemory(nodes)
                    extra.append(f"flower.superlink={federation.address}")
                run_dir, summary = run_experiment(load_config("default", [*common, *extra]), quiet=True)
            finally:
                node_peaks = memory.stop() if memory is not None else {}
                if federation is not None:
                    federation.stop()
            first, seconds = round_seconds(run_dir, args.rounds)
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            sizes = [r["bytes_up"] for r in records if r.get("type") == "client"]
            results[runtime] = {"median": statistics.median(seconds), "rounds": seconds, "dir": run_dir}
            results[runtime] |= {"mb": max(sizes) / 1e6, "rss": summary["peak_rss_mb"], "first": first}
            results[runtime] |= {"nodes": node_peaks}
            print(
                f"{runtime}: round 1 {first:.2f} s, rounds 2..{args.rounds - 1} seconds {[round(s, 2) for s in seconds]}",
                flush=True,
            )
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
        print("\n| runtime | first round (s) | first round's start-up over the median (s) | peak RSS here (MB) |")
        print("| --- | --- | --- | --- |")
        for runtime, r in results.items():
            print(f"| {runtime} | {r['first']:.2f} | {r['first'] - r['median']:+.2f} | {r['rss']:.0f} |")
        for runtime, r in results.items():
            if r["nodes"]:
                print(f"\n{runtime}: peak RSS of each SuperNode process (largest over the nodes)")
                print("| node process | peak RSS (MB) |")
                print("| --- | --- |")
                for role in ROLES.values():
                    if role in r["nodes"]:
                        print(f"| {role} | {r['nodes'][role]:.0f} |")


if __name__ == "__main__":
    main()
