"""One federated run from a config: ``setup() -> fit() -> finish()`` as plain functions.

The whole round reads top to bottom in :func:`fit`, one banner per phase. Runtimes only move tensors;
the strategy only does arithmetic; this module decides what happens when and writes it down.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedpeft.config.recipes import ConfigError, dump_config, load_run_config
from fedpeft.config.schema import RunConfig
from fedpeft.data.federated import FederatedData, build_federated_data
from fedpeft.data.partition import PartitionError
from fedpeft.data.sources import DataSourceError
from fedpeft.data.text_tasks import (
    GENERATION_METRICS,
    SCORE_SPECIAL_TOKENS,
    TASK_HEADS,
    TASK_NUM_LABELS,
    THRESHOLD_ON_VALIDATION,
)
from fedpeft.evaluation.metrics import (
    best_f1_threshold,
    classifier_outputs,
    evaluate_causal_lm,
    evaluate_classifier,
    evaluate_generation,
    evaluate_retrieval,
)
from fedpeft.experiment.progress import RunProgress
from fedpeft.fl.client_round import RETRIEVAL_TEMPERATURE, ClientUpdate, LocalTrainingArgs
from fedpeft.fl.lora_aggregation import aggregate_round, check_lora_aggregation
from fedpeft.fl.sampling import clients_per_round, sample_clients
from fedpeft.fl.strategies import Strategy, build_strategy
from fedpeft.models.base import load_base_model
from fedpeft.models.peft_methods import apply_lora
from fedpeft.models.state import get_trainable_state, set_trainable_state
from fedpeft.paths import atomic_write_text
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.checkpoint import Checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from fedpeft.reporting.plots import plot_losses, plot_partition_heatmap
from fedpeft.runtime.local import LocalRuntime
from fedpeft.seeding import numpy_rng, torch_rng_scope
from fedpeft.tensors import TensorDict, payload_bytes

RESUMABLE_KEYS = ("fl.rounds",)


def quiet_libraries() -> None:
    """Keep the run's own progress readable: no per-file progress bars or deprecation chatter from the
    libraries underneath (their errors still surface)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


class RunInterrupted(Exception):
    def __init__(self, run_dir: Path, last_round: int):
        super().__init__(
            f"interrupted; {run_dir} holds every round up to {last_round}. "
            f"Continue with: fedpeft run --resume {run_dir}"
        )
        self.run_dir = run_dir
        self.last_round = last_round


@dataclass
class RunState:
    """Everything a run holds in memory between rounds."""

    config: RunConfig
    run_dir: Path
    model: torch.nn.Module
    tokenizer: Any
    data: FederatedData
    strategy: Strategy
    runtime: LocalRuntime
    global_state: TensorDict
    completed_round: int = 0

    @property
    def log(self) -> rd.MetricsLog:
        return rd.MetricsLog(self.run_dir / rd.METRICS_FILE)


@contextmanager
def _as_config_error() -> Iterator[None]:
    """A ValueError from a builder is a configuration problem: report it as one (the CLI shows it)."""
    try:
        yield
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_data(config: RunConfig, tokenizer) -> FederatedData:
    """The run's federated data: a pure function of the config (and its seed) and the tokenizer."""
    d = config.data
    return build_federated_data(
        tokenizer=tokenizer,
        source=d.source,
        task=d.task,
        modules=d.modules,
        schema=d.schema_,
        max_rows=d.max_rows,
        test_size=d.test_size,
        val_fraction=d.val_fraction,
        partition=d.partition,
        shards_per_client=d.shards_per_client,
        dirichlet_alpha=d.dirichlet_alpha,
        quantity_range=tuple(d.quantity_range),
        min_client_size=d.min_client_size,
        max_length=d.max_length,
        template=d.template,
        n_clients=config.fl.clients,
        rng=numpy_rng(config.fl.seed, "data"),
        retrieval_candidates=config.eval.retrieval_candidates,
    )


def setup(config: RunConfig, run_dir: Path) -> RunState:
    """Build the run in dependency order; every check that can fail does so before round 1."""
    seed = config.fl.seed
    quiet_libraries()
    # Strategy first: a wrong name or setting, or a round size it degenerates on, is found before
    # anything slow is loaded.
    with _as_config_error():
        strategy = build_strategy(config.fl.strategy, config.fl.strategy_args)
        strategy.check_round_size(clients_per_round(config.fl.clients, config.fl.fraction))
    # The base model comes before the data because the data is tokenized with its tokenizer. A new
    # classification head is initialised here, from the init generator.
    with torch_rng_scope(seed, "init", 1), _as_config_error():
        base = load_base_model(
            config.model.name,
            config.model.dtype,
            TASK_HEADS[config.data.task],
            TASK_NUM_LABELS.get(config.data.task, 2),
        )
    head, tokenizer = base.head, base.tokenizer
    if head == "seq2seq_lm" and config.data.task == "completion":
        raise ConfigError(
            f"data.task=completion has no prompt for an encoder to read; model.name={config.model.name!r} is an "
            f"encoder-decoder. Use a decoder-only model, or data.task=instruction or code_to_text"
        )
    # Data is split once, from its own generator, so every round and every resume sees the same clients.
    try:
        data = build_data(config, tokenizer)
    except (PartitionError, DataSourceError):
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if config.data.task in THRESHOLD_ON_VALIDATION and not any(c.val for c in data.clients):
        raise ConfigError(
            f"data.task={config.data.task} chooses its decision threshold on the clients' validation rows, "
            f"but there are none; set data.val_fraction > 0"
        )
    # The adapter's initial weights come from the init generator: the same seed, the same start.
    with torch_rng_scope(seed, "init"), _as_config_error():
        model = apply_lora(
            base.model,
            r=config.peft.r,
            alpha=config.peft.alpha,
            dropout=config.peft.dropout,
            target_modules=config.peft.target_modules,
            head=head,
        )
    model.eval()
    with _as_config_error():
        check_lora_aggregation(config.fl.lora_aggregation, get_trainable_state(model))
    args = LocalTrainingArgs(
        epochs=config.train.epochs,
        max_steps=config.train.max_steps,
        batch_size=config.train.batch_size,
        micro_batch_size=config.train.micro_batch_size,
        lr=config.train.lr,
        schedule=config.train.schedule,
        warmup_ratio=config.train.warmup_ratio,
        weight_decay=config.train.weight_decay,
        max_grad_norm=config.train.max_grad_norm,
        mask_prompt=not config.data.train_on_inputs,
        pad_id=tokenizer.pad_token_id,
        head=head,
    )
    runtime = LocalRuntime(model, [c.train for c in data.clients], args, seed)
    return RunState(
        config=config,
        run_dir=run_dir,
        model=model,
        tokenizer=tokenizer,
        data=data,
        strategy=strategy,
        runtime=runtime,
        global_state=get_trainable_state(model),
    )


def evaluate_global(state: RunState) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The global adapter on the test split and on each client's validation split."""
    set_trainable_state(state.model, state.global_state)
    cfg = state.config.eval
    task = state.config.data.task
    head = state.runtime.args.head
    pad = state.tokenizer.pad_token_id
    unscored = () if SCORE_SPECIAL_TOKENS[task] else state.tokenizer.all_special_ids

    threshold = None
    if task in THRESHOLD_ON_VALIDATION:
        val = [e for c in state.data.clients for e in c.val]
        _, val_labels, val_probs = classifier_outputs(state.model, val, cfg.batch_size, pad)
        threshold = best_f1_threshold(val_labels, val_probs[:, 1])

    def evaluate(examples, distractors=()):
        if head == "embedding":
            return evaluate_retrieval(state.model, examples, cfg.batch_size, pad, RETRIEVAL_TEMPERATURE, distractors)
        if head == "sequence_classification":
            n_labels = TASK_NUM_LABELS[task]
            return evaluate_classifier(state.model, examples, cfg.batch_size, pad, n_labels, threshold)
        return evaluate_causal_lm(state.model, examples, cfg.batch_size, pad, unscored, head)

    test = evaluate(state.data.test, state.data.distractors)
    if task in GENERATION_METRICS:
        test |= evaluate_generation(state.model, state.tokenizer, state.data.test, cfg.max_new_tokens)
    per_client = {}
    if cfg.clients:
        for c in state.data.clients:
            if c.val:
                per_client[f"client-{c.client_id}"] = evaluate(c.val)
    return test, per_client


def _should_evaluate(config: RunConfig, rnd: int) -> bool:
    every = config.eval.every
    return rnd == config.fl.rounds or (every > 0 and rnd % every == 0)


def _client_record(rnd: int, u: ClientUpdate, bytes_down: int) -> dict[str, Any]:
    return {
        "type": "client",
        "round": rnd,
        "client": u.client_id,
        "examples": u.num_examples,
        "steps": u.num_steps,
        "train_loss": u.train_loss,
        "bytes_up": payload_bytes(u.state),
        "bytes_down": bytes_down,
        "seconds": round(u.seconds, 4),
    }


def fit(state: RunState, progress: RunProgress) -> None:
    """The round loop, from the round after the last completed one to ``fl.rounds``."""
    cfg = state.config
    if state.completed_round == 0 and cfg.eval.every > 0 and not any(r.get("round") == 0 for r in state.log.read()):
        test, per_client = evaluate_global(state)
        state.log.append({"type": "round", "round": 0, "eval": test, "client_eval": per_client})
        progress.round_line(0, [], None, test, 0, 0.0)
    progress.start_rounds(cfg.fl.rounds, state.completed_round)
    for rnd in range(state.completed_round + 1, cfg.fl.rounds + 1):
        started = time.perf_counter()
        # ---- sample: a generator per round, so round r picks the same clients after a resume ----
        client_ids = sample_clients(cfg.fl.clients, cfg.fl.fraction, numpy_rng(cfg.fl.seed, "sampling", rnd))
        # ---- train: every sampled client starts from the current global state ----
        current = state.global_state
        updates = state.runtime.train_round(
            rnd,
            client_ids,
            current,
            on_client_start=progress.start_client,
            on_step=progress.client_step,
            hook_for=lambda cid, g=current: state.strategy.client_hook(cid, g),
        )
        bytes_down = payload_bytes(current)
        # ---- aggregate: the strategy, over LoRA pairs or their products ----
        state.global_state, aggregation = aggregate_round(
            state.strategy, cfg.fl.lora_aggregation, current, updates, rnd
        )
        # ---- evaluate ----
        test, per_client = evaluate_global(state) if _should_evaluate(cfg, rnd) else (None, {})
        # ---- record and checkpoint: the round counts as done only once its checkpoint is in place ----
        for u in updates:
            state.log.append(_client_record(rnd, u, bytes_down))
        n_examples = sum(u.num_examples for u in updates)
        train_loss = sum(u.train_loss * u.num_examples for u in updates) / n_examples
        up = sum(payload_bytes(u.state) for u in updates)
        down = bytes_down * len(updates)
        seconds = time.perf_counter() - started
        state.log.append(
            {
                "type": "round",
                "round": rnd,
                "clients": client_ids,
                "examples": n_examples,
                "train_loss": train_loss,
                "eval": test,
                "client_eval": per_client,
                "bytes_up": up,
                "bytes_down": down,
                "seconds": round(seconds, 4),
                **aggregation,
            }
        )
        save_checkpoint(
            state.run_dir,
            Checkpoint(
                round=rnd,
                global_state=state.global_state,
                strategy_state=state.strategy.state_dict(),
                extra={"rng": "derived from fl.seed per (purpose, round, client); no state to restore"},
            ),
            keep=cfg.output.keep_checkpoints,
        )
        state.completed_round = rnd
        progress.round_line(rnd, client_ids, train_loss, test, up + down, seconds)
        progress.advance_round()


def finish(state: RunState, status: str, started: float) -> dict[str, Any]:
    """Write the PEFT adapter, loss plot and summary.json; return the summary."""
    run_dir = state.run_dir
    rounds = [r for r in state.log.read() if r.get("type") == "round"]
    if status == "completed":
        set_trainable_state(state.model, state.global_state)
        state.model.save_pretrained(run_dir / rd.ADAPTER_DIR)
        state.tokenizer.save_pretrained(run_dir / rd.ADAPTER_DIR)
    if rounds:
        plot_losses(rounds, run_dir / rd.LOSS_PLOT)
    evals = [r for r in rounds if r.get("eval")]
    trainable = sum(t.numel() for t in state.global_state.values())
    total_params = sum(p.numel() for p in state.model.parameters())
    summary = {
        "recipe": state.config.recipe,
        "status": status,
        "rounds_completed": state.completed_round,
        "rounds_planned": state.config.fl.rounds,
        "final_eval": evals[-1]["eval"] if evals else None,
        "initial_eval": evals[0]["eval"] if evals and evals[0]["round"] == 0 else None,
        "best_eval_loss": min((r["eval"]["loss"] for r in evals), default=None),
        "bytes_up": sum(r.get("bytes_up", 0) for r in rounds),
        "bytes_down": sum(r.get("bytes_down", 0) for r in rounds),
        "rounds_seconds": round(sum(r.get("seconds", 0.0) for r in rounds), 3),
        "wall_seconds_this_process": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "trainable_percent": round(100.0 * trainable / total_params, 4),
        "adapter": str(run_dir / rd.ADAPTER_DIR) if status == "completed" else None,
    }
    rd.write_json(run_dir / rd.SUMMARY_FILE, summary)
    return summary


def _checkpointed_round(run_dir: Path) -> int:
    """The last round whose checkpoint is complete on disk (0 if none): the truth about what is done."""
    done = list_checkpoints(run_dir)
    return int(done[-1].name.removeprefix("round-")) if done else 0


def _sync_log_to_checkpoints(state: RunState) -> None:
    """The log may hold records of a round whose checkpoint never completed; cut them."""
    state.completed_round = _checkpointed_round(state.run_dir)
    state.log.truncate_after(state.completed_round)


def _restore(state: RunState) -> None:
    """Load the newest complete checkpoint and drop log records of any round after it."""
    _sync_log_to_checkpoints(state)
    if state.completed_round:
        ckpt = load_checkpoint(list_checkpoints(state.run_dir)[-1])
        set_trainable_state(state.model, ckpt.global_state)
        state.global_state = ckpt.global_state
        state.strategy.load_state_dict(ckpt.strategy_state)


def resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The run directory's config, with only ``fl.rounds`` changeable (to extend a finished run)."""
    from fedpeft.config.recipes import apply_overrides, validate_config

    config = load_run_config(run_dir / rd.CONFIG_FILE)
    bad = [o for o in overrides if o.partition("=")[0].strip() not in RESUMABLE_KEYS]
    if bad:
        raise ConfigError(
            f"--resume continues the run as configured; only {', '.join(RESUMABLE_KEYS)} may be set, not {bad}"
        )
    if overrides:
        config = validate_config(apply_overrides(config.model_dump(mode="json"), overrides))
    done = _checkpointed_round(run_dir)
    if config.fl.rounds < done:
        raise ConfigError(f"fl.rounds={config.fl.rounds} is below the {done} rounds {run_dir} has already completed")
    return config


def run_experiment(
    config: RunConfig | None = None,
    *,
    resume_dir: Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Start a new run from ``config`` or continue the one in ``resume_dir``. Returns (run_dir, summary)."""
    started = time.perf_counter()
    if resume_dir is not None:
        config = resume_config(Path(resume_dir), overrides or [])
    elif config is None:
        raise ValueError("run_experiment needs a config or a resume_dir")
    progress = RunProgress(quiet=quiet)
    # The run directory is created only once setup has passed every check, so bad input leaves nothing.
    state = setup(config, Path(resume_dir or config.output.dir))
    run_dir = state.run_dir = Path(resume_dir) if resume_dir else rd.new_run_dir(Path(config.output.dir), config.recipe)
    progress.message(f"run directory: {run_dir}")
    atomic_write_text(run_dir / rd.CONFIG_FILE, dump_config(config))
    rd.write_json(run_dir / rd.PARTITION_FILE, state.data.report)
    plot_partition_heatmap(state.data.report["categories"], run_dir / rd.PARTITION_PLOT)
    if resume_dir is not None:
        _restore(state)
        progress.message(f"resuming after round {state.completed_round} of {config.fl.rounds}")
    try:
        with progress:
            fit(state, progress)
    except KeyboardInterrupt:
        _sync_log_to_checkpoints(state)
        finish(state, "interrupted", started)
        raise RunInterrupted(run_dir, state.completed_round) from None
    except BaseException:
        _sync_log_to_checkpoints(state)
        finish(state, "failed", started)
        raise
    summary = finish(state, "completed", started)
    progress.message(f"adapter: {summary['adapter']}")
    return run_dir, summary
