"""``fedpeft evaluate``: the code-evaluation suites on a run directory, a PEFT adapter directory or a model.

- A **run directory** is rebuilt as the run built it (its resolved config: base model, PEFT method, head)
  and given the trained state of its newest checkpoint, so every PEFT method and a stacked-LoRA run's merged
  rounds are evaluated exactly as trained; a personalised run is evaluated once per client.
- An **adapter directory** (``adapter_config.json``, as any run writes) is loaded with peft onto the base it
  names (``base_model_name_or_path``).
- ``reference:canonical`` / ``reference:buggy`` answer every problem with the suite's canonical solution
  (the harness's self-check: pass@1 must be 1) or its known-wrong one (humaneval-fix's injected bugs).
- Anything else is a model name: ``builtin:small``, a local transformers directory or a hub id.

Results go to ``OUT/results.json`` (flat metrics per model label) and each sample to
``OUT/<label>/<suite>.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from fedpeft.config.recipes import load_run_config, validate_config
from fedpeft.config.schema import RunConfig
from fedpeft.config.training import EvalConfig
from fedpeft.errors import FedpeftError
from fedpeft.evaluation.suites.base import REFERENCE_ANSWERS
from fedpeft.experiment.code_eval import SUITES_DIR, run_suites
from fedpeft.experiment.setup import adapt_model, load_model
from fedpeft.models.base import GENERATIVE_HEADS, load_base_model
from fedpeft.models.state import set_trainable_state
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.checkpoint import list_checkpoints, load_checkpoint

RESULTS_FILE = "results.json"
REFERENCE_PREFIX = "reference:"
"""``reference:canonical`` / ``reference:buggy``: the suites' own reference answers instead of a model."""


class EvaluateError(FedpeftError, ValueError):
    """A target ``fedpeft evaluate`` cannot evaluate."""


def eval_config(base: EvalConfig, overrides: Mapping[str, Any]) -> EvalConfig:
    """``base`` with the command's options (``suites``, ``suite_limit``, ...) applied and validated again;
    an error names the ``eval.`` key as a recipe's would."""
    return validate_config({"eval": {**base.model_dump(), **overrides}}).eval


def _run_models(run_dir: Path, device: str | None) -> tuple[RunConfig, list[tuple[str, _Deferred, Any]]]:
    config = load_run_config(run_dir / rd.CONFIG_FILE)
    if device is not None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"device": device})})
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise EvaluateError(f"{run_dir} has no checkpoint yet (checkpoints/round-N): nothing trained to evaluate")
    base = load_model(config)
    if base.head not in GENERATIVE_HEADS:
        raise EvaluateError(
            f"{run_dir} trained a {base.head} head (data.task={config.data.task}), which writes no code"
        )
    model = adapt_model(config, base.model, base.head)
    ckpt = load_checkpoint(checkpoints[-1])
    if ckpt.merged:
        from fedpeft.fl.lora_aggregation import merge_pairs

        for pairs in ckpt.merged.values():
            merge_pairs(model, pairs)
    if not ckpt.client_states:
        return config, [("global", _Deferred(model, ckpt.global_state), base.tokenizer)]
    states = [(f"client-{cid}", ckpt.client_states.get(cid, ckpt.global_state)) for cid in range(config.fl.clients)]
    return config, [(label, _Deferred(model, state), base.tokenizer) for label, state in states]


class _Deferred:
    """A personalised client's model: the shared model given that client's state when it is its turn."""

    def __init__(self, model: torch.nn.Module, state: Mapping[str, torch.Tensor] | None = None):
        self.model, self.state = model, state

    def activate(self) -> torch.nn.Module:
        if self.state is not None:
            set_trainable_state(self.model, dict(self.state))
        return self.model


def _adapter_model(adapter_dir: Path, device: str | None) -> list[tuple[str, _Deferred, Any]]:
    from peft import PeftModel

    settings = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base_name = settings.get("base_model_name_or_path")
    if not base_name:
        raise EvaluateError(f"{adapter_dir / 'adapter_config.json'} names no base_model_name_or_path")
    base = load_base_model(base_name, device=device or "cpu")
    model = PeftModel.from_pretrained(base.model, str(adapter_dir))
    return [(adapter_dir.name, _Deferred(model), base.tokenizer)]


def _named_model(name: str, device: str | None) -> list[tuple[str, _Deferred, Any]]:
    base = load_base_model(name, device=device or "cpu")
    return [(name.replace("/", "--").replace(":", "-"), _Deferred(base.model), base.tokenizer)]


def evaluate_target(
    target: str,
    overrides: Mapping[str, Any],
    out: Path | None = None,
    device: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Path, dict[str, dict[str, float]]]:
    """Run ``overrides['suites']`` on ``target``; (output directory, {model label: flat metrics})."""
    path = Path(target).expanduser()
    stamp = time.strftime("evaluate-%Y%m%d-%H%M%S")
    reference = None
    if target.startswith(REFERENCE_PREFIX):
        reference = target[len(REFERENCE_PREFIX) :] or "canonical"
        if reference not in REFERENCE_ANSWERS:
            valid = ", ".join(f"{REFERENCE_PREFIX}{a}" for a in REFERENCE_ANSWERS)
            raise EvaluateError(f"unknown reference target {target!r}; valid: {valid}")
        cfg, seed = eval_config(EvalConfig(), overrides), 0
        models = [(f"reference-{reference}", None, None)]
        out = out or Path("code-eval") / f"reference-{reference}-{stamp}"
    elif (path / rd.CONFIG_FILE).is_file():
        config, models = _run_models(path, device)
        cfg, seed = eval_config(config.eval, overrides), config.fl.seed
        out = out or path / SUITES_DIR / stamp
    elif (path / "adapter_config.json").is_file():
        cfg, seed = eval_config(EvalConfig(), overrides), 0
        models = _adapter_model(path, device)
        out = out or Path("code-eval") / f"{path.name}-{stamp}"
    elif path.exists() and not (path / "config.json").is_file():
        raise EvaluateError(
            f"{path} is neither a run directory ({rd.CONFIG_FILE}), a PEFT adapter directory (adapter_config.json) "
            "nor a transformers model directory (config.json)"
        )
    else:
        cfg, seed = eval_config(EvalConfig(), overrides), 0
        models = _named_model(target, device)
        out = out or Path("code-eval") / f"{models[0][0]}-{stamp}"
    if not cfg.suites:
        raise EvaluateError("no suites to run: name them with --suites (`fedpeft suites` lists them)")
    results: dict[str, dict[str, float]] = {}
    out.mkdir(parents=True, exist_ok=True)
    for label, deferred, tokenizer in models:
        model = deferred.activate() if deferred is not None else None
        log(f"{label}: {', '.join(cfg.suites)}")
        metrics, _ = run_suites(model, tokenizer, cfg, seed, out / label, reference=reference)
        results[label] = metrics
        (out / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return out, results
