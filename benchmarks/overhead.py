"""What the federated machinery costs on top of plain training, in time and memory.

1. Wall time: the federated round loop (sampling, state load/copy, FedAvg, checkpoints, metrics) against
   a plain single-process peft training loop doing the same optimizer steps on the same batches
   (same examples, same order, same micro-batching). Evaluation is excluded from both: the federated
   run evaluates only once, at the end, and that evaluation is timed and subtracted.
2. Peak RSS with 2 vs 20 clients on the same data and step budget (DESIGN principle 3: one base model
   serves all clients, so memory must not grow with their number).

Each measurement runs in its own subprocess so peak RSS is that run's alone.

    python benchmarks/overhead.py                 # defaults: builtin:tiny, 4 clients x 3 rounds
    python benchmarks/overhead.py --rounds 5 --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def common_overrides(args, clients: int, out: str) -> list[str]:
    return [
        f"model.name={args.model}",
        f"fl.clients={clients}",
        f"fl.rounds={args.rounds}",
        "fl.fraction=1.0",
        f"train.max_steps={args.steps}",
        "train.batch_size=8",
        "train.micro_batch_size=8",
        "eval.every=0",
        "eval.clients=false",
        f"output.dir={out}",
    ]


def federated(args) -> dict:
    from fedpeft.config import load_config
    from fedpeft.experiment import evaluate as evaluate_module
    from fedpeft.experiment import run as run_module
    from fedpeft.experiment.progress import RunProgress
    from fedpeft.reporting.run_dir import new_run_dir

    with tempfile.TemporaryDirectory() as out:
        config = load_config("default", common_overrides(args, args.clients, out))
        state = run_module.setup(config, new_run_dir(Path(out), "bench"))
        t0 = time.perf_counter()
        run_module.fit(state, RunProgress(quiet=True))
        fit_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate_module.evaluate_global(state)
        eval_seconds = time.perf_counter() - t0
    steps = args.rounds * args.clients * args.steps
    return {"seconds": fit_seconds - eval_seconds, "eval_seconds": eval_seconds, "steps": steps}


def plain(args) -> dict:
    """The same batches through one LoRA model with one AdamW: no federation at all."""
    import torch

    from fedpeft.config import load_config
    from fedpeft.experiment import run as run_module
    from fedpeft.fl.client_round import OBJECTIVES, batch_order
    from fedpeft.seeding import numpy_rng

    with tempfile.TemporaryDirectory() as out:
        config = load_config("default", common_overrides(args, args.clients, out))
        state = run_module.setup(config, Path(out))
    model, cfg = state.model, config.train
    batches = []
    for rnd in range(1, args.rounds + 1):
        for cid in range(args.clients):
            examples = state.data.clients[cid].train
            rng = numpy_rng(config.fl.seed, "train", rnd, cid)
            batches += [
                [examples[i] for i in idx] for idx in batch_order(len(examples), args.steps, cfg.batch_size, rng)
            ]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    local = state.runtime.args
    objective = OBJECTIVES[local.head]
    model.train()
    t0 = time.perf_counter()
    for rows in batches:
        batch = objective.collate(rows, local.pad_id, local.mask_prompt)
        loss = objective.loss_sum(model, batch) / max(objective.count(batch), 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"seconds": time.perf_counter() - t0, "steps": len(batches)}


def child(mode: str, args) -> dict:
    result = federated(args) if mode == "federated" else plain(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def spawn(mode: str, args, clients: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--clients", str(clients), "--model", args.model]
    cmd += ["--rounds", str(args.rounds), "--steps", str(args.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="local optimizer steps per client per round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["federated", "plain"])
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    spawn("plain", args, args.clients)  # warm the cache (corpus, built-in model) outside the timings
    fed, base = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine speed hits both alike
        fed.append(spawn("federated", args, args.clients))
        base.append(spawn("plain", args, args.clients))
    f = sorted(r["seconds"] for r in fed)[len(fed) // 2]
    p = sorted(r["seconds"] for r in base)[len(base) // 2]
    steps = fed[0]["steps"]
    print(f"model {args.model}, {args.clients} clients x {args.rounds} rounds x {args.steps} steps = {steps} steps")
    print(f"  plain peft loop   median {p:7.2f} s  ({1000 * p / steps:.1f} ms/step)")
    print(f"  federated (local) median {f:7.2f} s  ({1000 * f / steps:.1f} ms/step)")
    print(f"  wall(federated)/wall(plain) = {f / p:.3f}   (goal <= 1.10)")

    # Same data and the same total number of optimizer steps, split across 2 or 20 clients.
    total = 2 * args.rounds * args.steps * 10
    mem = {}
    for n in (2, 20):
        per_client = max(1, total // (n * args.rounds))
        sub = argparse.Namespace(**{**vars(args), "steps": per_client})
        runs = sorted(spawn("federated", sub, n)["peak_rss_mb"] for _ in range(args.repeats))
        mem[n] = runs[len(runs) // 2]
    print(
        f"peak RSS (median of {args.repeats}), federated, {total} steps in all: 2 clients {mem[2]:.0f} MB, 20 clients {mem[20]:.0f} MB"
    )
    print(f"  ratio 20/2 = {mem[20] / mem[2]:.3f}   (goal <= 1.2)")


if __name__ == "__main__":
    main()
