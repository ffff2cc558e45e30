"""The offline task table: for each task, the headline metric of a base model
(a) before fine-tuning, (b) centralised (one client holding all rows), (c) FedAvg over N non-IID clients
(natural partition: whole stdlib modules per client) and (d) one client alone on its own rows, all with
the same number of optimizer steps and evaluated on the same test rows.

    python benchmarks/offline_tasks.py                       # builtin:small, all tasks
    python benchmarks/offline_tasks.py --tasks defect --rounds 2 --steps 5 --model builtin:micro

The test split depends only on the seed and the data settings, not on the number of clients, so (b),
(c) and (d) are scored on identical rows. (d) trains client 0 alone, round after round, for as many
steps as (c) takes across all its clients.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from fedpeft.config import load_config
from fedpeft.experiment import evaluate as evaluate_module
from fedpeft.experiment import run as run_module
from fedpeft.experiment.progress import RunProgress

HEADLINE = {
    "instruction": "token_accuracy",
    "completion": "token_accuracy",
    "code_to_text": "bleu",
    "code_search": "mrr",
    "defect": "accuracy",
    "clone": "f1",
}
TASK_SETTINGS = {
    "instruction": ["data.max_length=256"],
    "completion": ["data.max_length=256"],
    "code_to_text": ["data.max_length=320", "eval.max_new_tokens=24"],
    "code_search": ["data.max_length=256"],
    "defect": ["data.max_length=384"],
    "clone": ["data.max_length=768", "train.batch_size=4", "train.micro_batch_size=4"],
}


def overrides(args, task: str, clients: int, steps: int, out: str) -> list[str]:
    return [
        f"model.name={args.model}",
        f"data.task={task}",
        "data.partition=natural",
        f"data.max_rows={args.rows}",
        f"data.test_size={args.test_size}",
        "data.val_fraction=0.1",
        f"fl.clients={clients}",
        "fl.fraction=1.0",
        f"fl.rounds={args.rounds}",
        f"train.max_steps={steps}",
        f"train.lr={args.lr}",
        "eval.every=0",
        "eval.clients=false",
        f"output.dir={out}",
        *TASK_SETTINGS[task],
    ]


def setup_in(args, task: str, clients: int, steps: int, root: str, name: str):
    run_dir = Path(root) / name
    run_dir.mkdir()
    return run_module.setup(load_config("default", overrides(args, task, clients, steps, root)), run_dir)


def final_eval(state) -> dict:
    """The last round's evaluation, as fit() logged it (fit always evaluates its final round)."""
    return [r for r in state.log.read() if r.get("type") == "round"][-1]["eval"]


def task_row(args, task: str) -> dict:
    metric = HEADLINE[task]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        # (c) FedAvg over N clients; the untrained adapter's evaluation is (a).
        fed = setup_in(args, task, args.clients, args.steps, root, "fedavg")
        before, _, _ = evaluate_module.evaluate_global(fed)
        run_module.fit(fed, RunProgress(quiet=True))
        # (d) client 0 alone: the same total steps, all on its own rows.
        single = setup_in(args, task, args.clients, args.steps, root, "single")
        single.runtime.args = dataclasses.replace(single.runtime.args, max_steps=args.steps * args.clients)
        for rnd in range(1, args.rounds + 1):
            single.global_state = single.runtime.train_round(rnd, [0], single.global_state)[0].state
        alone, _, _ = evaluate_module.evaluate_global(single)
        # (b) centralised: one client with every row, the same total steps.
        central = setup_in(args, task, 1, args.steps * args.clients, root, "centralised")
        run_module.fit(central, RunProgress(quiet=True))
        fedavg, centralised = final_eval(fed), final_eval(central)
    return {
        "task": task,
        "metric": metric,
        "before": before[metric],
        "centralised": centralised[metric],
        "fedavg": fedavg[metric],
        "single": alone[metric],
        "test_rows": len(fed.data.test),
        "client0_rows": len(fed.data.clients[0].train),
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:small")
    parser.add_argument("--tasks", default=",".join(HEADLINE))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="local steps per client per round")
    parser.add_argument("--rows", type=int, default=1200, help="client pool size (data.max_rows)")
    parser.add_argument("--test-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    print(f"model {args.model}; {args.clients} clients (natural partition), {args.rounds} rounds x {args.steps} steps")
    print("| task | metric | before | centralised | FedAvg | single client | test rows | minutes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for task in args.tasks.split(","):
        r = task_row(args, task)
        rows.append(r)
        print(
            f"| {task} | {r['metric']} | {r['before']:.4f} | {r['centralised']:.4f} | {r['fedavg']:.4f} | "
            f"{r['single']:.4f} | {r['test_rows']} | {r['minutes']} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
