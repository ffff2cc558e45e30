"""Resuming a run: what a run directory may continue from, and putting its newest checkpoint back.

A round counts as done only once its checkpoint is complete on disk; the log is cut to match. Before the
model loads, :func:`check_resumable` finds a damaged directory (a deleted checkpoint, a cut log, an edited
config) so nothing in it is written; :func:`restore` then loads the checkpoint into the built run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpeft.config.recipes import ConfigError, load_run_config
from fedpeft.config.schema import RunConfig
from fedpeft.models.lora_layers import merge_pairs
from fedpeft.models.state import set_trainable_state
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.checkpoint import CheckpointError, check_checkpoint, list_checkpoints, load_checkpoint
from fedpeft.tensors import TensorDict

if TYPE_CHECKING:
    from fedpeft.experiment.setup import RunState

RESUMABLE_KEYS = ("fl.rounds",)
"""The only configuration a resumed run may change."""


def checkpointed_round(run_dir: Path) -> int:
    """The last round whose checkpoint is complete on disk (0 if none): the truth about what is done."""
    done = list_checkpoints(run_dir)
    return int(done[-1].name.removeprefix("round-")) if done else 0


def sync_log_to_checkpoints(state: RunState) -> None:
    """The log may hold records of a round whose checkpoint never completed; cut them."""
    state.completed_round = checkpointed_round(state.run_dir)
    state.log.truncate_after(state.completed_round)


def restore(state: RunState) -> None:
    """Load the newest complete checkpoint into the built run, in memory only: a checkpoint that does not fit
    the model (another run's, another configuration's) is a :class:`CheckpointError` before anything is
    written. The log is cut to it afterwards, by :func:`sync_log_to_checkpoints`."""
    state.completed_round = checkpointed_round(state.run_dir)
    if not state.completed_round:
        return
    path = list_checkpoints(state.run_dir)[-1]
    _, shapes = check_checkpoint(path)
    problem = state_mismatch(shapes, state.global_state)
    if problem:
        raise CheckpointError(
            f"{path / 'global.safetensors'} does not fit model.name={state.config.model.name!r} with this "
            f"run's peft settings ({problem}); it was written by another run or configuration"
        )
    ckpt = load_checkpoint(path)
    for cid, own in ckpt.client_states.items():
        problem = state_mismatch({k: tuple(v.shape) for k, v in own.items()}, state.global_state)
        if problem:
            raise CheckpointError(f"{path / 'clients.safetensors'}: client {cid}'s state does not fit ({problem})")
    try:
        state.strategy.load_state_dict(ckpt.strategy_state)
        # Stacked rounds are re-merged into the fresh base in round order: the same additions, in the
        # same order, as the uninterrupted run made.
        for pairs in ckpt.merged.values():
            merge_pairs(state.model, pairs)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: the strategy or merged state does not fit fl.strategy={state.config.fl.strategy} "
            f"({type(err).__name__}: {err})"
        ) from None
    set_trainable_state(state.model, ckpt.global_state)
    state.global_state = ckpt.global_state
    state.client_states = ckpt.client_states
    state.merged = ckpt.merged


def state_mismatch(shapes: dict[str, tuple[int, ...]], expected: TensorDict) -> str | None:
    """How a stored state (name -> shape) differs from the model's trainable state, or None."""
    missing, extra = sorted(expected.keys() - shapes.keys()), sorted(shapes.keys() - expected.keys())
    if missing or extra:
        return f"{len(missing)} tensor(s) missing, e.g. {missing[:1]}, {len(extra)} unexpected, e.g. {extra[:1]}"
    wrong = [k for k in sorted(shapes) if shapes[k] != tuple(expected[k].shape)]
    if wrong:
        return f"{wrong[0]} has shape {shapes[wrong[0]]}, the model's is {tuple(expected[wrong[0]].shape)}"
    return None


def _config_drift(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys (of those both have, but ``RESUMABLE_KEYS``) whose values differ: ``key (a -> b)``."""
    drift = []
    for key in recorded.keys() & current.keys():
        name = f"{prefix}{key}"
        a, b = recorded[key], current[key]
        if isinstance(a, dict) and isinstance(b, dict):
            drift += _config_drift(a, b, f"{name}.")
        elif a != b and name not in RESUMABLE_KEYS:
            drift.append(f"{name} ({a!r} -> {b!r})"[:160])
    return sorted(drift)


def check_resumable(run_dir: Path, config: RunConfig) -> None:
    """What a resume can check before the model loads, so a damaged run directory is reported before
    anything in it is written: the newest checkpoint's files, the configuration it was written with against
    config.yaml, and the log and summary against the checkpoints (a round they record that no checkpoint
    holds means a deleted or damaged checkpoint; a log that ends before the checkpoint, a cut log)."""
    done_dirs = list_checkpoints(run_dir)
    done = int(done_dirs[-1].name.removeprefix("round-")) if done_dirs else 0
    if done_dirs:
        meta, _ = check_checkpoint(done_dirs[-1])
        recorded = meta.get("config")
        drift = _config_drift(recorded, config.model_dump(mode="json")) if isinstance(recorded, dict) else []
        if drift:
            raise ConfigError(
                f"{run_dir / rd.CONFIG_FILE} differs from the configuration {done_dirs[-1]} was written with: "
                f"{'; '.join(drift[:5])}{' ...' if len(drift) > 5 else ''}. --resume continues a run as "
                "configured: restore config.yaml, or start a new run"
            )
    log_path = run_dir / rd.METRICS_FILE
    logged = [r["round"] for r in rd.MetricsLog(log_path).read() if r.get("type") == "round"]
    if done and max(logged, default=-1) < done:
        raise rd.RunDirError(
            f"{log_path} records rounds up to {max(logged, default='none')}, but {done_dirs[-1]} holds round "
            f"{done}: the log was cut or replaced, and a resumed run would miss those rounds' records"
        )
    summary_path = run_dir / rd.SUMMARY_FILE
    if not summary_path.exists():
        return
    try:
        summary = rd.read_json(summary_path)
        completed, status = int(summary["rounds_completed"]), summary["status"]
    except (OSError, ValueError, KeyError, TypeError):
        raise rd.RunDirError(
            f"{summary_path} is not a run summary (a JSON object with status and rounds_completed); it is "
            "written at the end of every run: move it away to resume from the checkpoints"
        ) from None
    if completed > done:
        missing = f"{run_dir / 'checkpoints'} has none" if not done else f"the newest is {done_dirs[-1]}"
        raise CheckpointError(
            f"{summary_path} records {completed} completed round(s), but no checkpoint holds round {completed} "
            f"({missing}): a checkpoint was deleted or damaged, so the run cannot continue exactly"
        )
    if status == "completed" and done >= config.fl.rounds:
        raise ConfigError(
            f"{run_dir} has completed all its fl.rounds={done} rounds; nothing to resume. To train further, "
            f"raise the rounds: --resume {run_dir} --set fl.rounds={done + 1} (or more)"
        )


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
    done = checkpointed_round(run_dir)
    if config.fl.rounds < done:
        raise ConfigError(f"fl.rounds={config.fl.rounds} is below the {done} rounds {run_dir} has already completed")
    check_resumable(run_dir, config)
    return config
