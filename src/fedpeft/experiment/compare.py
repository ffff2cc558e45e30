"""``fedpeft compare``: several strategies on one recipe, the same split and seed, one table and one plot.

Each entry is ``name`` or ``name:key=value:key=value``: a plain key is one of the strategy's
``fl.strategy_args`` (the recipe's own are dropped so that every entry says exactly what it runs), a dotted
key overrides the config for that entry only (``fedkd:data.server_split=shared``; keep the clients' split
the same across entries, or the comparison is no longer on the same data). Every entry is checked against the run first: its
name and settings, its round size and what it needs from the data (``Strategy.bind`` on the recipe's
model and data), so a typo in the last entry fails before the first one trains.

The comparison directory holds ``runs/`` (one ordinary, resumable run directory per entry),
``compare.json``, ``compare.md`` and ``compare.png``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.config.recipes import ConfigError, load_config
from fedpeft.config.schema import RunConfig
from fedpeft.experiment.progress import HEADLINE_METRICS
from fedpeft.fl.strategies import build_strategy
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.plots import plot_comparison

COMPARE_JSON, COMPARE_TABLE, COMPARE_PLOT = "compare.json", "compare.md", "compare.png"


@dataclass(frozen=True)
class Entry:
    label: str
    strategy: str
    overrides: tuple[str, ...]
    """``fl.strategy_args.KEY=VALUE`` and dotted config overrides for this entry."""


def parse_entries(spec: str) -> list[Entry]:
    """``"fedavg,fedprox:mu=0.1,trust:weights=dynamic-ref"`` -> entries; labels must be unique."""
    entries = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise ConfigError(f"--strategies {spec!r} has an empty entry; separate names with single commas")
        name, *settings = item.split(":")
        overrides = []
        for setting in settings:
            key, sep, value = setting.partition("=")
            if not sep or not key:
                raise ConfigError(f"--strategies entry {item!r}: {setting!r} is not key=value (e.g. fedprox:mu=0.1)")
            overrides.append(f"{key}={value}" if "." in key else f"fl.strategy_args.{key}={value}")
        entries.append(Entry(item, name, tuple(overrides)))
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--strategies lists an entry twice: {labels}")
    return entries


def safe_name(label: str) -> str:
    """A directory name for an entry label: letters, digits, '.', '-' and '_' kept, the rest '-'."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in label)


def entry_config(recipe: str, overrides: Sequence[str], entry: Entry, runs_dir: Path) -> RunConfig:
    return load_config(
        recipe,
        [
            *overrides,
            f"fl.strategy={entry.strategy}",
            "fl.strategy_args={}",
            *entry.overrides,
            f"output.dir={runs_dir / safe_name(entry.label)}",
        ],
    )


def _data_key(config: RunConfig) -> str:
    """Entries with equal keys share model, data and clients: one setup checks them all."""
    dumped = config.model_dump(mode="json")
    dumped["fl"] = {k: v for k, v in dumped["fl"].items() if k not in ("strategy", "strategy_args")}
    dumped.pop("output")
    return repr(dumped)


def preflight(configs: dict[str, RunConfig]) -> None:
    """Every entry's strategy built, sized and bound to its model and data before anything trains (one
    setup per distinct model/data configuration)."""
    from fedpeft.experiment.run import check_strategy_fits, setup

    states = {}
    for label, config in configs.items():
        key = _data_key(config)
        try:
            if key not in states:
                states[key] = setup(config, Path(config.output.dir))  # builds, sizes and binds this strategy
                continue
            state = states[key]
            strategy = build_strategy(config.fl.strategy, config.fl.strategy_args)
            check_strategy_fits(strategy, config, state.model, state.tokenizer, state.data, state.runtime.args)
        except (ValueError, ConfigError) as err:
            raise ConfigError(f"compare entry {label!r}: {err}") from None


def headline_metric(evaluation: dict[str, Any]) -> str:
    """The task's main metric in an eval record (token accuracy, BLEU, accuracy, F1, MRR), else the loss."""
    for key, _ in HEADLINE_METRICS:
        if key in evaluation and key != "perplexity":
            return key
    return "loss"


def summarise_run(label: str, run_dir: Path) -> dict[str, Any]:
    """One table row from a finished run directory."""
    log = rd.MetricsLog(run_dir / rd.METRICS_FILE).read()
    rounds = [r for r in log if r.get("type") == "round" and r.get("eval")]
    summary = rd.read_json(run_dir / rd.SUMMARY_FILE)
    last = rounds[-1]
    metric = headline_metric(last["eval"])
    higher_better = metric != "loss"
    values = [r["eval"][metric] for r in rounds if r["round"] > 0] or [last["eval"][metric]]
    client_values = [m[metric] for m in (last.get("client_eval") or {}).values() if metric in m]
    return {
        "strategy": label,
        "run_dir": str(run_dir),
        "metric": metric,
        "final": last["eval"][metric],
        "best": max(values) if higher_better else min(values),
        "final_loss": last["eval"]["loss"],
        "client_val": sum(client_values) / len(client_values) if client_values else None,
        "trainable": summary["trainable_parameters"],
        "trainable_percent": summary["trainable_percent"],
        "megabytes": (summary["bytes_up"] + summary["bytes_down"]) / 1e6,
        "seconds": summary["rounds_seconds"],
        "curve": [(r["round"], r["eval"][metric]) for r in rounds],
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    metric = rows[0]["metric"]
    lines = [
        f"| entry | final {metric} | best {metric} | final test loss | mean client-val {metric} | trainable "
        "(% of model) | MB exchanged | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        client = "-" if r["client_val"] is None else f"{r['client_val']:.4f}"
        lines.append(
            f"| {r['strategy']} | {r['final']:.4f} | {r['best']:.4f} | {r['final_loss']:.4f} | {client} | "
            f"{r['trainable']:,} ({r['trainable_percent']:.3g}%) | {r['megabytes']:.2f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def compare(
    recipe: str,
    strategies: str,
    overrides: Sequence[str] = (),
    out: Path | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run every entry of ``strategies`` on ``recipe`` and write the comparison; returns (directory, rows)."""
    from fedpeft.experiment.run import run_experiment

    entries = parse_entries(strategies)
    fixed = [o for o in overrides if o.partition("=")[0].strip().startswith("fl.strategy")]
    if fixed:
        raise ConfigError(
            f"--set {fixed[0]!r}: each compare entry names its strategy and settings; write them into "
            "--strategies as name:key=value (e.g. fedprox:mu=0.1)"
        )
    base = load_config(recipe, list(overrides))
    # Checked before the comparison directory exists, so bad input leaves nothing behind.
    preflight({e.label: entry_config(recipe, overrides, e, Path(base.output.dir)) for e in entries})
    root = Path(out) if out else rd.new_run_dir(Path(base.output.dir), f"compare-{Path(recipe).stem}")
    runs_dir = root / "runs"
    configs = {e.label: entry_config(recipe, overrides, e, runs_dir) for e in entries}
    rows = []
    for label, config in configs.items():
        started = time.perf_counter()
        log(f"[{len(rows) + 1}/{len(configs)}] {label}")
        run_dir, _ = run_experiment(config, quiet=quiet)
        rows.append(summarise_run(label, run_dir))
        log(f"    {rows[-1]['metric']} {rows[-1]['final']:.4f} in {time.perf_counter() - started:.0f} s -> {run_dir}")
        # Written after every entry, so an interrupted comparison keeps the table of what finished.
        rd.write_json(root / COMPARE_JSON, {"recipe": recipe, "overrides": list(overrides), "rows": rows})
        (root / COMPARE_TABLE).write_text(format_table(rows))
        plot_comparison({r["strategy"]: r["curve"] for r in rows}, rows[0]["metric"], root / COMPARE_PLOT)
    return root, rows
