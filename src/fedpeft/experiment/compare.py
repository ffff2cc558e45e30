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
from fedpeft.experiment.progress import HEADLINE_METRICS
from fedpeft.fl.strategies import build_strategy
from fedpeft.models.methods.config_keys import LEGACY_KEYS
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.plots import plot_comparison

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


def entry_config(recipe: str, overrides: Sequence[str], entry: Entry, runs_dir: Path) -> RunConfig:
    strategy = [] if entry.strategy is None else [f"fl.strategy={entry.strategy}", "fl.strategy_args={}"]
    return load_config(
        recipe, [*overrides, *strategy, *entry.overrides, f"output.dir={runs_dir / safe_name(entry.label)}"]
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


def headline_metric(evaluation: dict[str, Any]) -> str:
    """The task's main metric in an eval record (token accuracy, BLEU, accuracy, F1, MRR), else the loss."""
    for key, _ in HEADLINE_METRICS:
        if key in evaluation and key != "perplexity":
            return key
    return "loss"


def is_suite_score(key: str) -> bool:
    """A code-evaluation suite's headline figure in an eval record (``humaneval/pass@1``, ``defect-yesno/accuracy``)."""
    suite, _, figure = key.partition("/")
    return bool(suite) and (figure.startswith("pass@") or figure == "accuracy")


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


def format_table(rows: list[dict[str, Any]]) -> str:
    metric = rows[0]["metric"]
    gpu = any(r.get("peak_gpu_mb") is not None for r in rows)
    suites = sorted({k for r in rows for k in r.get("suites", {})})
    header = (
        f"| entry | final {metric} | best {metric} | final test loss | mean client-val {metric} | trainable "
        f"(% of model) | MB per round | peak RSS MB |{' peak GPU MB |' if gpu else ''} seconds |"
        + "".join(f" {k} |" for k in suites)
    )
    lines = [header, "|" + " --- |" * header.count(" |")]
    for r in rows:
        client = "-" if r["client_val"] is None else f"{r['client_val']:.4f}"
        rss = "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:,.0f}"
        gpu_cell = f" {'-' if r.get('peak_gpu_mb') is None else format(r['peak_gpu_mb'], ',.0f')} |" if gpu else ""
        lines.append(
            f"| {r['strategy']} | {r['final']:.4f} | {r['best']:.4f} | {r['final_loss']:.4f} | {client} | "
            f"{r['trainable']:,} ({r['trainable_percent']:.3g}%) | {r['megabytes_per_round']:.2f} | {rss} |"
            f"{gpu_cell} {r['seconds']:.1f} |"
            + "".join(f" {r.get('suites', {}).get(k, float('nan')):.4f} |" for k in suites)
        )
    return "\n".join(lines) + "\n"


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


def compare(
    recipe: str,
    strategies: str | None = None,
    overrides: Sequence[str] = (),
    out: Path | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    methods: str | None = None,
    isolate: bool = False,
) -> tuple[Path, list[dict[str, Any]]]:
    """Run every entry of ``strategies`` or of ``methods`` (one of the two) on ``recipe`` and write the
    comparison; returns (directory, rows). ``isolate`` runs each entry in its own process."""
    from fedpeft.experiment.run import run_experiment

    if (strategies is None) == (methods is None):
        raise ConfigError("compare takes either --strategies or --methods (one list of entries)")
    entries = parse_entries(strategies) if methods is None else parse_entries(methods, "methods")
    fixed = [o for o in overrides if o.partition("=")[0].strip().startswith("fl.strategy")]
    if fixed and methods is None:
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
        run_dir = run_isolated(config, quiet) if isolate else run_experiment(config, quiet=quiet)[0]
        rows.append(summarise_run(label, run_dir))
        log(f"    {rows[-1]['metric']} {rows[-1]['final']:.4f} in {time.perf_counter() - started:.0f} s -> {run_dir}")
        # Written after every entry, so an interrupted comparison keeps the table of what finished.
        rd.write_json(root / COMPARE_JSON, {"recipe": recipe, "overrides": list(overrides), "rows": rows})
        (root / COMPARE_TABLE).write_text(format_table(rows))
        plot_comparison({r["strategy"]: r["curve"] for r in rows}, rows[0]["metric"], root / COMPARE_PLOT)
    return root, rows
