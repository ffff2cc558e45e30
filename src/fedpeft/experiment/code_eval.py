"""Code-evaluation suites on a model as it is now: the ``eval.suite_*`` keys turned into suite runs, each
sample's prompt, completion and verdict written for inspection, and the scores as flat metrics
(``humaneval/pass@1``) for metrics.jsonl, summary.json and ``fedpeft compare``.

Used at evaluation rounds (the global adapter and each personalised client's) and by ``fedpeft evaluate``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from fedpeft.config.training import EvalConfig
from fedpeft.evaluation.sandbox import SandboxLimits
from fedpeft.evaluation.suites import SUITES, RunSettings, Suite, SuiteResult, run_suite, suite_problems
from fedpeft.models.generate import make_ask
from fedpeft.registry import parse_settings

SUITES_DIR = "suites"
"""Where a run directory keeps each evaluation's samples: ``suites/round-NNNN/<global|client-N>/<suite>.jsonl``."""

SCORES = ("accuracy", "unparsed", "empty_completions", "generate_seconds", "judge_seconds")
"""Besides every pass@k, the figures of a suite that go into the metrics."""


def suite_settings(cfg: EvalConfig, seed: int) -> RunSettings:
    """The run settings the ``eval.suite_*`` keys describe."""
    timeout = cfg.suite_timeout
    limits = SandboxLimits(timeout_s=timeout, cpu_s=max(1, int(timeout)))
    return RunSettings(
        limit=cfg.suite_limit,
        samples=cfg.suite_samples,
        temperature=cfg.suite_temperature,
        ks=tuple(cfg.suite_k),
        prompt_format=cfg.suite_prompt,
        seed=seed,
        sandbox=limits,
    )


def build_suites(cfg: EvalConfig) -> list[Suite]:
    """An instance of each suite in ``eval.suites`` with its ``eval.suite_args`` settings."""
    suites = []
    for name in cfg.suites:
        cls = SUITES.get(name)
        args = cfg.suite_args.get(name, {})
        suites.append(cls(parse_settings(f"eval.suite_args.{name}", name, "suite", cls.Settings, args)))
    return suites


def flat_metrics(result: SuiteResult) -> dict[str, float]:
    """``suite/metric`` for each pass@k and the figures in :data:`SCORES`."""
    keep = {k: v for k, v in result.metrics.items() if k.startswith("pass@") or k in SCORES}
    return {f"{result.suite}/{k}": float(v) for k, v in keep.items()}


def write_samples(result: SuiteResult, out_dir: Path) -> Path:
    """Every sample of ``result`` as JSON Lines (``<suite>.jsonl``) and its scores (``<suite>.json``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.suite}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for sample in result.samples:
            fh.write(json.dumps(sample.record()) + "\n")
    (out_dir / f"{result.suite}.json").write_text(json.dumps(result.metrics, indent=2) + "\n", encoding="utf-8")
    return path


def run_suites(
    model: torch.nn.Module | None,
    tokenizer: Any,
    cfg: EvalConfig,
    seed: int,
    out_dir: Path | None,
    batch_size: int | None = None,
    reference: str | None = None,
) -> tuple[dict[str, float], list[SuiteResult]]:
    """Every suite of ``eval.suites`` on ``model`` (its adapter as set now): flat metrics and the results;
    samples written under ``out_dir`` when given. ``reference`` (``canonical`` or ``buggy``) answers with
    the suites' reference answers instead of a model (the harness's self-check)."""
    ask = make_ask(model, tokenizer, cfg.suite_max_new_tokens, batch_size or cfg.batch_size, seed) if model else None
    metrics: dict[str, float] = {}
    results = []
    settings = suite_settings(cfg, seed)
    for suite in build_suites(cfg):
        asker = suite.reference_ask(suite_problems(suite, settings), reference) if reference else ask
        result = run_suite(suite, asker, settings)
        if out_dir is not None:
            write_samples(result, out_dir)
        if result.metrics["samples"] and result.metrics["empty_completions"] == result.metrics["samples"]:
            warnings.warn(
                f"suite {suite.name!r}: the model produced an empty completion for every one of its "
                f"{result.metrics['samples']} samples (all scored as failures); check eval.suite_prompt="
                f"{cfg.suite_prompt!r} and eval.suite_max_new_tokens={cfg.suite_max_new_tokens}",
                RuntimeWarning,
                stacklevel=2,
            )
        metrics |= flat_metrics(result)
        results.append(result)
    return metrics, results
