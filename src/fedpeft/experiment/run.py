"""One federated run from a config: ``setup() -> fit() -> finish()``.

:func:`run_experiment` picks the runtime's launcher from the registry (``runtime:``) and hands it
:func:`run_here`, this process's run, which the launcher calls directly (local), as the ServerApp of a
Flower simulation, or leaves to a SuperLink's ServerApp (deployment). The steps live in their own
modules: building (:mod:`~fedpeft.experiment.setup`), preflight checks (:mod:`~fedpeft.experiment.checks`),
the round loop (:mod:`~fedpeft.experiment.fit`), evaluation (:mod:`~fedpeft.experiment.evaluate`), records
(:mod:`~fedpeft.experiment.records`) and resume (:mod:`~fedpeft.experiment.resume`).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedpeft.config.recipes import dump_config
from fedpeft.config.schema import RunConfig
from fedpeft.errors import FedpeftError
from fedpeft.experiment import checks, resume
from fedpeft.experiment.fit import fit
from fedpeft.experiment.node import client_side
from fedpeft.experiment.progress import RunProgress
from fedpeft.experiment.records import summary_record
from fedpeft.experiment.setup import RunState, peft_spec, setup
from fedpeft.fl.screening import TooFewUpdatesError
from fedpeft.models.lora_layers import save_stacked_lora
from fedpeft.models.methods import save_trained
from fedpeft.models.state import set_trainable_state
from fedpeft.paths import atomic_write_text
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.plots import plot_losses, plot_mixing_matrix, plot_partition_heatmap
from fedpeft.reporting.report import ENVIRONMENT_FILE, environment_now
from fedpeft.reporting.trackers import open_trackers
from fedpeft.runtime.base import Launch, RunResult, Runtime, launcher


class RunInterrupted(FedpeftError):
    """Ctrl-C: the run stopped after its last complete round and can be resumed (exit status 130)."""

    exit_code = 130

    def __init__(self, run_dir: Path, last_round: int):
        super().__init__(
            f"interrupted; {run_dir} holds every round up to {last_round}. "
            f"Continue with: fedpeft run --resume {run_dir}"
        )
        self.run_dir = run_dir
        self.last_round = last_round


def run_experiment(
    config: RunConfig | None = None,
    *,
    resume_dir: Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
    client_fault: Callable[..., Any] | None = None,
) -> RunResult:
    """Start a new run from ``config`` or continue the one in ``resume_dir``. Returns (run_dir, summary).
    With ``runtime: flower-sim`` the same round loop runs as the ServerApp of a Flower simulation; with
    ``flower-deployment`` it is submitted to a SuperLink and runs there as a deployed ServerApp."""
    if resume_dir is not None:
        config = resume.resume_config(Path(resume_dir), overrides or [])
    elif config is None:
        raise ValueError("run_experiment needs a config or a resume_dir")
    with checks.as_config_error():
        chosen = launcher(config.runtime)
    if not chosen.in_process:
        checks.setup_checks(config)  # bad input fails here, not in a ServerApp
    return chosen.launch(launch_job(config, resume_dir, quiet, client_fault))


def launch_job(
    config: RunConfig, resume_dir: Path | None, quiet: bool, client_fault: Callable[..., Any] | None = None
) -> Launch:
    """The flat arguments a launcher takes, from the config. ``client_fault``: the fault drill remote clients
    run each round with (``fedpeft.testing.fault_drill``, passed by the entry points)."""
    output = Path(config.output.dir).resolve()
    # Remote sides read the config as text; the run directory is where this machine would put it.
    remote = config.model_copy(update={"output": config.output.model_copy(update={"dir": str(output)})})
    return Launch(
        run_here=lambda connect: run_here(config, resume_dir, quiet, connect),
        n_clients=config.fl.clients,
        config_text=dump_config(remote),
        output_dir=output,
        resume_dir=Path(resume_dir).resolve() if resume_dir is not None else None,
        quiet=quiet,
        options=config.flower.model_dump() | {"simulated": config.runtime == "flower-sim"},
        build_client_side=client_side,
        client_fault=client_fault,
    )


def run_here(
    config: RunConfig,
    resume_dir: Path | None,
    quiet: bool,
    connect: Callable[[Runtime], Runtime] | None = None,
) -> RunResult:
    """One run in this process; ``connect`` replaces the local runtime (by the Flower one)."""
    started = time.perf_counter()
    if torch.cuda.is_initialized():  # the summary's peak GPU memory is this run's
        torch.cuda.reset_peak_memory_stats()
    progress = RunProgress(quiet=quiet)
    if resume_dir is None:
        rd.check_output_dir(Path(config.output.dir))
    # The run directory is created only once setup has passed every check, so bad input leaves nothing; a
    # resumed one is written only once its checkpoint is restored into the model.
    state = setup(config, Path(resume_dir or config.output.dir))
    if resume_dir is not None:
        resume.restore(state)
    if connect is not None:
        state.runtime = connect(state.runtime)
    run_dir = state.run_dir = Path(resume_dir) if resume_dir else rd.new_run_dir(Path(config.output.dir), config.recipe)
    progress.message(f"run directory: {run_dir}")
    device = next(state.model.parameters()).device
    if config.train.mixed_precision != "none" and device.type == "cpu":
        progress.message(
            f"note: train.mixed_precision={config.train.mixed_precision} on the CPU; CPUs without half-precision "
            "matrix units run autocast far slower than float32 (10x in benchmarks/memory_speed.py here)"
        )
    atomic_write_text(run_dir / rd.CONFIG_FILE, dump_config(config))
    rd.write_json(run_dir / ENVIRONMENT_FILE, environment_now())  # what `fedpeft report` shows as recorded
    rd.write_json(run_dir / rd.PARTITION_FILE, state.data.report)
    if state.data.report.get("categories"):  # a server whose clients keep their files has no table to draw
        plot_partition_heatmap(state.data.report["categories"], run_dir / rd.PARTITION_PLOT)
    if resume_dir is not None:
        resume.sync_log_to_checkpoints(state)
        progress.message(f"resuming after round {state.completed_round} of {config.fl.rounds}")
    resumed_after = state.completed_round if resume_dir is not None else None
    try:
        state.trackers = open_trackers(config.output.loggers, run_dir, config.model_dump(mode="json"), resumed_after)
        with progress:
            fit(state, progress)
    except KeyboardInterrupt:
        resume.sync_log_to_checkpoints(state)
        finish(state, "interrupted", started)
        raise RunInterrupted(run_dir, state.completed_round) from None
    except TooFewUpdatesError as err:
        resume.sync_log_to_checkpoints(state)
        message = (
            f"{err}. {run_dir} holds every round up to {state.completed_round}; once the clients are back, "
            f"continue with: fedpeft run --resume {run_dir}"
        )
        finish(state, "failed", started, error=message)
        raise TooFewUpdatesError(message) from None
    except BaseException as err:
        resume.sync_log_to_checkpoints(state)
        finish(state, "failed", started, error=f"{type(err).__name__}: {err}")
        raise
    finally:
        state.runtime.close()
        error = sys.exc_info()[1]
        state.trackers.close(
            "completed" if error is None else "interrupted" if isinstance(error, RunInterrupted) else "failed"
        )
    summary = finish(state, "completed", started)
    progress.message(f"adapter: {summary['adapter']}")
    return run_dir, summary


def finish(state: RunState, status: str, started: float, error: str | None = None) -> dict[str, Any]:
    """Write the PEFT adapter (one per client for a personalised run), the plots and summary.json (with
    ``error``, why a failed run stopped); return the summary."""
    run_dir = state.run_dir
    rounds = [r for r in state.log.read() if r.get("type") == "round"]
    if status == "completed":
        save_adapters(state)
    if rounds:
        plot_losses(rounds, run_dir / rd.LOSS_PLOT)
    mixed = [r for r in rounds if r.get("mixing")]
    if mixed:
        plot_mixing_matrix(mixed[-1]["mixing"], mixed[-1]["clients"], mixed[-1]["round"], run_dir / rd.MIXING_PLOT)
    summary = summary_record(state, rounds, status, started) | ({"error": error} if error else {})
    rd.write_json(run_dir / rd.SUMMARY_FILE, summary)
    return summary


def save_adapters(state: RunState) -> None:
    """The trained adapters as PEFT adapter directories: ``adapter/``, or ``adapter/client-N`` per client."""
    run_dir = state.run_dir
    adapters = {rd.ADAPTER_DIR: state.global_state}
    if state.strategy.kind == "personalised":
        adapters = {
            f"{rd.ADAPTER_DIR}/client-{cid}": state.client_states.get(cid, state.global_state)
            for cid in range(state.config.fl.clients)
        }
    for where, trainable in adapters.items():
        # Written next to its place and renamed in: a crash never leaves a half-written adapter (nor, when
        # stacking, the untrained fresh one where the stacked one belongs).
        final, tmp = run_dir / where, run_dir / f"{where}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        set_trainable_state(state.model, trainable)
        save_trained(state.model, tmp, peft_spec(state.config))
        state.tokenizer.save_pretrained(tmp)
        if state.merged:
            save_stacked_lora(state.model, state.global_state, list(state.merged.values()), tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
