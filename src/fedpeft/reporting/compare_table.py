"""The tables of ``fedpeft compare`` (compare.md) and, over several seeds, the per-entry aggregates behind them
(compare.json's ``aggregates``): mean ± sample standard deviation of each figure and the paired difference against
a reference entry with its Student-t interval (``reporting.stats``). Rows are ``experiment.compare.summarise_run``'s
dicts, with a ``seed`` key when there are several seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedpeft.reporting.stats import describe, paired_difference

HEADLINE_ORDER = ("token_accuracy", "bleu", "accuracy", "f1", "mcc", "mrr")
"""A task's main metric, first found first: what compare tables and reports headline."""


def headline_metric(evaluation: dict[str, Any]) -> str:
    """The task's main metric in an eval record (token accuracy, BLEU, accuracy, F1, MCC, MRR), else the loss."""
    return next((key for key in HEADLINE_ORDER if key in evaluation), "loss")


def is_suite_score(key: str) -> bool:
    """A code-evaluation suite's headline figure in an eval record (``humaneval/pass@1``, ``defect-yesno/accuracy``)."""
    suite, _, figure = key.partition("/")
    return bool(suite) and (figure.startswith("pass@") or figure == "accuracy")


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


SEED_FIGURES = (
    "final",
    "best",
    "final_loss",
    "client_val",
    "megabytes_per_round",
    "peak_rss_mb",
    "peak_gpu_mb",
    "seconds",
)
"""Row figures summarised over seeds (when every seed has one); the suites' scores too."""
PAIRED_FIGURES = ("final", "best", "final_loss")
"""Figures whose paired difference against the reference entry is kept in compare.json (the table shows final's)."""


def aggregate_seeds(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Per entry (in the rows' order): its seeds, each figure's ``describe`` over them and, against
    ``reference``, ``paired_difference`` over the seeds both have finished (None for the reference itself)."""
    labels = list(dict.fromkeys(r["strategy"] for r in rows))
    by_seed = {(r["strategy"], r["seed"]): r for r in rows}
    aggregates = []
    for label in labels:
        mine = [r for r in rows if r["strategy"] == label]
        figures = {
            key: describe([r[key] for r in mine]) for key in SEED_FIGURES if all(r.get(key) is not None for r in mine)
        }
        for key in sorted({k for r in mine for k in r.get("suites", {})}):
            if all(key in r.get("suites", {}) for r in mine):
                figures[key] = describe([r["suites"][key] for r in mine])
        paired = [r for r in mine if (reference, r["seed"]) in by_seed]
        difference = {
            key: None
            if label == reference
            else paired_difference([r[key] for r in paired], [by_seed[reference, r["seed"]][key] for r in paired])
            for key in PAIRED_FIGURES
        }
        aggregates.append(
            {
                "strategy": label,
                "seeds": [r["seed"] for r in mine],
                "metric": mine[0]["metric"],
                "trainable": mine[0]["trainable"],
                "trainable_percent": mine[0]["trainable_percent"],
                "figures": figures,
                "difference": difference,
            }
        )
    return aggregates


def _spread(figures: dict[str, Any], key: str, comma: bool = False) -> str:
    """``mean ± std`` of one figure (``mean ± n/a`` for one seed, ``-`` where a seed lacks it)."""
    if key not in figures:
        return "-"
    described = figures[key]
    if comma:
        return f"{described['mean']:,.0f}"
    std = "n/a" if described["std"] is None else f"{described['std']:.4f}"
    return f"{described['mean']:.4f} ± {std}"


def format_seed_table(aggregates: list[dict[str, Any]], reference: str, seeds: Sequence[int]) -> str:
    """The multi-seed table: mean ± standard deviation per figure, the paired difference against ``reference``."""
    metric = aggregates[0]["metric"]
    gpu = any("peak_gpu_mb" in a["figures"] for a in aggregates)
    suites = sorted({k for a in aggregates for k in a["figures"] if is_suite_score(k)})
    header = (
        f"| entry | seeds | final {metric} | best {metric} | final {metric} - {reference} (95% CI) | final test loss | "
        f"mean client-val {metric} | trainable (% of model) | MB per round | peak RSS MB |"
        f"{' peak GPU MB |' if gpu else ''} seconds |" + "".join(f" {k} |" for k in suites)
    )
    lines = [header, "|" + " --- |" * header.count(" |")]
    for a in aggregates:
        fig, diff = a["figures"], a["difference"]["final"]
        paired = "n/a" if diff is None else f"{diff['mean']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]"
        megabytes = "-" if "megabytes_per_round" not in fig else f"{fig['megabytes_per_round']['mean']:.2f}"
        gpu_cell = f" {_spread(fig, 'peak_gpu_mb', comma=True)} |" if gpu else ""
        seconds = "-" if "seconds" not in fig else f"{fig['seconds']['mean']:.1f}"
        lines.append(
            f"| {a['strategy']} | {len(a['seeds'])} | {_spread(fig, 'final')} | {_spread(fig, 'best')} | {paired} | "
            f"{_spread(fig, 'final_loss')} | {_spread(fig, 'client_val')} | {a['trainable']:,} "
            f"({a['trainable_percent']:.3g}%) | {megabytes} | {_spread(fig, 'peak_rss_mb', comma=True)} |{gpu_cell} "
            f"{seconds} |" + "".join(f" {_spread(fig, k)} |" for k in suites)
        )
    note = (
        f"\nSeeds {', '.join(map(str, seeds))} (fl.seed: split, client sampling, init). Each cell: mean ± sample "
        f"standard deviation (ddof=1) over the entry's seeds; memory, MB and seconds: means. The difference is the "
        f"mean over seeds of (entry - {reference}) on the same seed, with a two-sided 95% Student-t interval; n/a "
        "for the reference itself and for fewer than two paired seeds.\n"
    )
    return "\n".join(lines) + "\n" + note
