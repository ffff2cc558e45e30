"""``fedpeft compare``: several strategies (``--strategies``) or PEFT methods (``--methods``) on one recipe,
the same split, seed and step budget, one table and one plot.

Each entry is ``name`` or ``name:key=value:key=value``: a plain key is one of the strategy's
``fl.strategy_args`` (the recipe's own are dropped so that every entry says exactly what it runs), a dotted
key overrides the config for that entry only (``fedkd:data.server_split=shared``; keep the clients' split
the same across entries, or the comparison is no longer on the same data). Every entry is checked against the run first: its
name and settings, its round size and what it needs from the data (``Strategy.bind`` on the recipe's
model and data), so a typo in the last entry fails before the first one trains.

A method entry is ``method`` or ``method:key=value``: a plain key is a ``peft.*`` setting
(``lora:r=16:use_dora=true``), a dotted key any config key; every method entry runs the recipe's strategy.

Each entry runs in a fresh process (``isolate``), so the peak memory in its row is its own: the process's
peak resident set (which includes Python, torch and the model loader) and, on a GPU, torch's peak allocation.

The comparison directory holds ``runs/`` (one ordinary, resumable run directory per entry),
``compare.json``, ``compare.md`` and ``compare.png``.

``seeds`` (``--seeds 0,1,2``) runs every entry on every seed (``fl.seed``: the split, client sampling and init),
seed by seed, so an interrupted comparison holds whole seeds; run directories are ``runs/<entry>-seed<N>``. The
table then shows each figure's mean ± sample standard deviation over seeds and, against a reference entry (the
first unless ``reference`` names another), the mean paired difference of the final metric with its 95% Student-t
interval (``reporting.stats``); compare.json keeps every per-seed row and the aggregates; the plot draws each
entry's mean curve with a min..max band. Without ``seeds`` (or with one seed) the files are those of one run per
entry. Every entry is checked on the first seed only (a setup per seed would load the model once per seed).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpeft.config.recipes import ConfigError, load_config, validate_config
from fedpeft.config.schema import PeftConfig, RunConfig
from fedpeft.fl.strategies import build_strategy
from fedpeft.models.methods.config_keys import LEGACY_KEYS
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.compare_table import (
    aggregate_seeds,
    format_seed_table,
    format_table,
    headline_metric,
    is_suite_score,
)
from fedpeft.reporting.plots import plot_comparison, plot_comparison_bands

COMPARE_JSON, COMPARE_TABLE, COMPARE_PLOT = "compare.json", "compare.md", "compare.png"


@dataclass(frozen=True)
class Entry:
    label: str
    strategy: str | None
    """The entry's strategy; None keeps the recipe's strategy and its settings (a method entry)."""
    overrides: tuple[str, ...]
    """``fl.strategy_args.KEY=VALUE`` / ``peft.KEY=VALUE`` and dotted config overrides for this entry."""


def parse_entries(spec: str, kind: str = "strategies") -> list[Entry]:
    """``"fedavg,fedprox:mu=0.1,trust:weights=dynamic-ref"`` (kind ``strategies``) or
    ``"lora,lora:use_dora=true,ia3"`` (kind ``methods``) -> entries; labels must be unique."""
    if kind not in ("strategies", "methods"):
        raise ValueError(f"unknown entry kind {kind!r}")
    plain_prefix, example = ("fl.strategy_args", "fedprox:mu=0.1") if kind == "strategies" else ("peft", "lora:r=16")
    entries = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            raise ConfigError(f"--{kind} {spec!r} has an empty entry; separate names with single commas")
        name, *settings = item.split(":")
        overrides = [] if kind == "strategies" else [f"peft.method={name}"]
        for setting in settings:
            key, sep, value = setting.partition("=")
            if not sep or not key:
                raise ConfigError(f"--{kind} entry {item!r}: {setting!r} is not key=value (e.g. {example})")
            prefix = plain_prefix
            if kind == "methods" and key not in PeftConfig.model_fields and key not in LEGACY_KEYS:
                prefix = "peft.method_args"  # a method's own setting
            overrides.append(f"{key}={value}" if "." in key else f"{prefix}.{key}={value}")
        entries.append(Entry(item, name if kind == "strategies" else None, tuple(overrides)))
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"--{kind} lists an entry twice: {labels}")
    return entries


def safe_name(label: str) -> str:
    """A directory name for an entry label: letters, digits, '.', '-' and '_' kept, the rest '-'."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in label)


def parse_seeds(spec: str | Sequence[int]) -> list[int]:
    """``"0,1,2"`` (or a list of ints) -> distinct non-negative seeds, in the order given."""
    items = [part.strip() for part in spec.split(",")] if isinstance(spec, str) else list(spec)
    if not items or items == [""]:
        raise ConfigError("--seeds is empty; give comma-separated non-negative integers, e.g. --seeds 0,1,2")
    seeds = []
    for item in items:
        try:
            seed = int(item) if isinstance(item, str) else item
        except ValueError:
            seed = None
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"--seeds {spec!r}: {item!r} is not a non-negative integer (e.g. --seeds 0,1,2)")
        seeds.append(seed)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {spec!r} lists a seed twice: {seeds}")
    return seeds


def entry_config(
    recipe: str, overrides: Sequence[str], entry: Entry, runs_dir: Path, seed: int | None = None
) -> RunConfig:
    """The entry's config; with ``seed`` its ``fl.seed`` and a run directory named after it."""
    # A strategy entry starts from no strategy settings; a method entry from no method settings (the recipe's
    # belong to its own method, e.g. an adapter's bottleneck, which another method does not take).
    strategy = (
        ["peft.method_args={}"] if entry.strategy is None else [f"fl.strategy={entry.strategy}", "fl.strategy_args={}"]
    )
    name = safe_name(entry.label) if seed is None else f"{safe_name(entry.label)}-seed{seed}"
    seeded = [] if seed is None else [f"fl.seed={seed}"]
    return load_config(recipe, [*overrides, *strategy, *entry.overrides, *seeded, f"output.dir={runs_dir / name}"])


def _data_key(config: RunConfig) -> str:
    """Entries with equal keys share model, data and clients: one setup checks them all."""
    dumped = config.model_dump(mode="json")
    dumped["fl"] = {k: v for k, v in dumped["fl"].items() if k not in ("strategy", "strategy_args")}
    dumped.pop("output")
    return repr(dumped)


def preflight(configs: dict[str, RunConfig]) -> None:
    """Every entry's strategy built, sized and bound to its model and data before anything trains (one
    setup per distinct model/data configuration)."""
    from fedpeft.experiment.checks import check_strategy_fits
    from fedpeft.experiment.setup import server_context, setup

    states = {}
    for label, config in configs.items():
        key = _data_key(config)
        try:
            if key not in states:
                states[key] = setup(config, Path(config.output.dir))  # builds, sizes and binds this strategy
                continue
            state = states[key]
            strategy = build_strategy(config.fl.strategy, config.fl.strategy_args)
            context = server_context(config, state.model, state.tokenizer, state.data, state.args)
            check_strategy_fits(strategy, config, state.model, state.data, context)
        except (ValueError, ConfigError) as err:
            raise ConfigError(f"compare entry {label!r}: {err}") from None


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
        "final_loss": last["eval"].get("loss", float("nan")),
        "suites": {k: v for k, v in last["eval"].items() if is_suite_score(k)},
        "client_val": sum(client_values) / len(client_values) if client_values else None,
        "trainable": summary["trainable_parameters"],
        "trainable_percent": summary["trainable_percent"],
        "megabytes": (summary["bytes_up"] + summary["bytes_down"]) / 1e6,
        "megabytes_per_round": (summary["bytes_up"] + summary["bytes_down"])
        / 1e6
        / max(summary["rounds_completed"], 1),
        "peak_rss_mb": summary.get("peak_rss_mb"),
        "peak_gpu_mb": summary.get("peak_gpu_mb"),
        "seconds": summary["rounds_seconds"],
        "curve": [(r["round"], r["eval"][metric]) for r in rounds],
    }


def _entry_process(config: dict[str, Any], quiet: bool, conn) -> None:
    """Child side of an isolated entry: run it and report ``(status, text)`` through ``conn``."""
    from fedpeft.experiment.run import RunInterrupted, run_experiment

    try:
        run_dir, _ = run_experiment(validate_config(config), quiet=quiet)
        conn.send(("ok", str(run_dir)))
    except RunInterrupted as err:
        conn.send(("interrupted", f"{err.run_dir}\n{err.last_round}"))
    except BaseException as err:  # reported to the parent, which raises it there
        conn.send(("error", f"{err.__class__.__name__}: {err}"))
    finally:
        conn.close()


def run_isolated(config: RunConfig, quiet: bool) -> Path:
    """``run_experiment(config)`` in a fresh (spawned) process; its run directory. An interrupt reaches the
    child too (same process group): it checkpoints and reports, and the parent raises RunInterrupted."""
    from fedpeft.experiment.run import RunInterrupted

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_entry_process, args=(config.model_dump(mode="json"), quiet, child))
    process.start()
    child.close()
    try:
        try:
            status, text = parent.recv()
        except KeyboardInterrupt:  # the child got it as well: wait for it to write its checkpoint
            status, text = parent.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"compare entry process died (exit code {process.exitcode}) before reporting") from None
    finally:
        process.join()
    if status == "interrupted":
        run_dir, last_round = text.split("\n")
        raise RunInterrupted(Path(run_dir), int(last_round))
    if status == "error":
        raise RuntimeError(f"compare entry failed in its process: {text}")
    return Path(text)


def _seed_curves(rows: list[dict[str, Any]]) -> dict[str, list[list[tuple[int, float]]]]:
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for r in rows:
        curves.setdefault(r["strategy"], []).append(r["curve"])
    return curves


def _write_results(
    root: Path,
    recipe: str,
    overrides: Sequence[str],
    rows: list[dict[str, Any]],
    seeds: list[int] | None,
    reference: str,
) -> None:
    """compare.json, compare.md and compare.png for the rows so far (one run per entry, or several seeds)."""
    if seeds is None:
        rd.write_json(root / COMPARE_JSON, {"recipe": recipe, "overrides": list(overrides), "rows": rows})
        (root / COMPARE_TABLE).write_text(format_table(rows))
        plot_comparison({r["strategy"]: r["curve"] for r in rows}, rows[0]["metric"], root / COMPARE_PLOT)
        return
    aggregates = aggregate_seeds(rows, reference)
    rd.write_json(
        root / COMPARE_JSON,
        {
            "recipe": recipe,
            "overrides": list(overrides),
            "seeds": seeds,
            "reference": reference,
            "rows": rows,
            "aggregates": aggregates,
        },
    )
    (root / COMPARE_TABLE).write_text(format_seed_table(aggregates, reference, seeds))
    plot_comparison_bands(_seed_curves(rows), rows[0]["metric"], root / COMPARE_PLOT)


def compare(
    recipe: str,
    strategies: str | None = None,
    overrides: Sequence[str] = (),
    out: Path | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    methods: str | None = None,
    isolate: bool = False,
    seeds: str | Sequence[int] | None = None,
    reference: str | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run every entry of ``strategies`` or of ``methods`` (one of the two) on ``recipe`` and write the
    comparison; returns (directory, rows: one per run, with its ``seed`` when there are several seeds).
    ``isolate`` runs each entry in its own process; ``seeds`` runs every entry on each seed; ``reference`` is
    the entry the others are measured against over seeds (default: the first)."""
    from fedpeft.experiment.run import run_experiment

    if (strategies is None) == (methods is None):
        raise ConfigError("compare takes either --strategies or --methods (one list of entries)")
    entries = parse_entries(strategies) if methods is None else parse_entries(methods, "methods")
    labels = [e.label for e in entries]
    if reference is not None and reference not in labels:
        raise ConfigError(f"--reference {reference!r} is not one of the entries: {', '.join(labels)}")
    reference = reference or labels[0]
    seed_list = None if seeds is None else parse_seeds(seeds)
    fixed = [o for o in overrides if o.partition("=")[0].strip().startswith("fl.strategy")]
    if fixed and methods is None:
        raise ConfigError(
            f"--set {fixed[0]!r}: each compare entry names its strategy and settings; write them into "
            "--strategies as name:key=value (e.g. fedprox:mu=0.1)"
        )
    seeded = [o for e in entries for o in (*overrides, *e.overrides) if o.partition("=")[0].strip() == "fl.seed"]
    if seed_list is not None and seeded:
        raise ConfigError(f"{seeded[0]!r}: --seeds sets fl.seed for every run; drop the fl.seed override")
    if seed_list is not None and len(seed_list) == 1:  # one seed: the files of one run per entry
        overrides, seed_list = [*overrides, f"fl.seed={seed_list[0]}"], None
    base = load_config(recipe, list(overrides))
    first = None if seed_list is None else seed_list[0]
    # Checked before the comparison directory exists, so bad input leaves nothing behind.
    preflight({e.label: entry_config(recipe, overrides, e, Path(base.output.dir), first) for e in entries})
    root = Path(out) if out else rd.new_run_dir(Path(base.output.dir), f"compare-{Path(recipe).stem}")
    runs_dir = root / "runs"
    # Seed by seed, so that an interrupted comparison holds every entry on the seeds it finished.
    runs = [(e, s) for s in (seed_list or [None]) for e in entries]
    rows: list[dict[str, Any]] = []
    for entry, seed in runs:
        config = entry_config(recipe, overrides, entry, runs_dir, seed)
        started = time.perf_counter()
        log(f"[{len(rows) + 1}/{len(runs)}] {entry.label}" + ("" if seed is None else f" (seed {seed})"))
        run_dir = run_isolated(config, quiet) if isolate else run_experiment(config, quiet=quiet)[0]
        rows.append(summarise_run(entry.label, run_dir) | ({} if seed is None else {"seed": seed}))
        log(f"    {rows[-1]['metric']} {rows[-1]['final']:.4f} in {time.perf_counter() - started:.0f} s -> {run_dir}")
        # Written after every run, so an interrupted comparison keeps the table of what finished.
        _write_results(root, recipe, overrides, rows, seed_list, reference)
    return root, rows
