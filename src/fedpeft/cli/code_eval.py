"""``fedpeft suites`` and ``fedpeft evaluate``: the code-evaluation suites from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedpeft.cli import _list_parts, _reported, app


@app.command()
def suites() -> None:
    """List the code-evaluation suites and their settings (eval.suites, eval.suite_args)."""
    from fedpeft.evaluation.suites import SUITES

    _list_parts(SUITES.describe(), width=18)


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def _suite_args(pairs: list[str] | None) -> dict[str, dict[str, Any]]:
    import yaml

    args: dict[str, dict[str, Any]] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        suite, dot, field = key.rpartition(".")
        if not sep or not dot or not suite or not field:
            raise typer.BadParameter(f"{pair!r} is not SUITE.SETTING=VALUE (e.g. recode-syntax.variants=2)")
        args.setdefault(suite, {})[field] = yaml.safe_load(value)
    return args


@app.command()
def evaluate(
    target: Annotated[str, typer.Argument(help="A run directory, a PEFT adapter directory, or a model name.")],
    suites: Annotated[
        list[str] | None, typer.Option("--suites", help="Suites to run, comma-separated or repeated.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many problems per suite.")] = None,
    samples: Annotated[int | None, typer.Option(help="Samples per problem (n).")] = None,
    k: Annotated[list[str] | None, typer.Option("--k", help="pass@k to report, e.g. --k 1,10.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0: greedy).")] = None,
    prompt_format: Annotated[str | None, typer.Option(help="plain, alpaca or question-answer (Astraios).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Longest completion per sample.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds one sample may run in the sandbox.")] = None,
    suite_arg: Annotated[
        list[str] | None, typer.Option("--suite-arg", help="A suite's setting: recode-syntax.variants=2 (repeatable).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:N or auto (default: the run's, else cpu).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default: RUN_DIR/suites/evaluate-<time>).")
    ] = None,
) -> None:
    """Score a run, an adapter or a model on code-evaluation suites by running the code it writes."""
    from fedpeft.experiment.evaluate_target import evaluate_target

    options = {
        "suites": _split(suites) or None,
        "suite_limit": limit,
        "suite_samples": samples,
        "suite_k": [int(x) for x in _split(k)] or None,
        "suite_temperature": temperature,
        "suite_prompt": prompt_format,
        "suite_max_new_tokens": max_new_tokens,
        "suite_timeout": timeout,
        "suite_args": _suite_args(suite_arg) or None,
    }
    overrides = {key: value for key, value in options.items() if value is not None}
    with _reported():
        where, results = evaluate_target(target, overrides, out, device, log=typer.echo)
    names = sorted({key for metrics in results.values() for key in metrics if "/pass@" in key or "/accuracy" in key})
    typer.echo(f"{'model':<20} " + " ".join(f"{n:>24}" for n in names))
    for label, metrics in results.items():
        typer.echo(f"{label:<20} " + " ".join(f"{metrics.get(n, float('nan')):>24.4f}" for n in names))
    typer.echo(f"samples and scores: {where}")
