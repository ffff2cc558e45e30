"""Every preflight check of a run, in one place: what is found before round 1, each with the key or file to
fix and what would be valid (DESIGN principle 7).

They are ordered by what they need: the strategy's settings need nothing loaded; the data's rows need no
tokenizer; the model's head against the task needs the model; the strategy against the built run needs
everything. ``setup`` calls them in that order, and ``fedpeft compare``'s preflight calls the same ones, so
a comparison entry fails exactly as its run would.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fedpeft.config.recipes import ConfigError
from fedpeft.config.schema import RunConfig
from fedpeft.data.client_files import FileFederationRows, load_file_federation_rows
from fedpeft.data.federated import FederatedData, check_row_counts, load_rows
from fedpeft.data.partition import PartitionError
from fedpeft.data.sources import DataSourceError
from fedpeft.data.tasks import TASKS, get_task
from fedpeft.fl.lora_aggregation import check_lora_aggregation, check_stackable
from fedpeft.fl.sampling import clients_per_round
from fedpeft.fl.strategies import ServerContext, Strategy, build_strategy
from fedpeft.models.base import GENERATIVE_HEADS
from fedpeft.models.heads import check_packing_isolates
from fedpeft.models.state import trainable_parameters
from fedpeft.reporting.trackers import check_installed
from fedpeft.runtime.base import launcher


@contextmanager
def as_config_error() -> Iterator[None]:
    """A ValueError from a builder is a configuration problem: report it as one (the CLI shows it)."""
    try:
        yield
    except ValueError as err:
        raise ConfigError(str(err)) from None


def setup_checks(config: RunConfig) -> Strategy:
    """The checks that need nothing loaded: the strategy, its settings and round size, and whether it can
    run on the chosen runtime. Returns the strategy."""
    check_installed(config.output.loggers)  # before a deployment submits the job, not inside its ServerApp
    with as_config_error():
        strategy = build_strategy(config.fl.strategy, config.fl.strategy_args)
        strategy.check_round_size(clients_per_round(config.fl.clients, config.fl.fraction))
    warn_single_client_rounds(config, strategy)
    pooled = strategy.kind == "pooled"
    if not launcher(config.runtime).in_process and (pooled or strategy.hook_reads_server_state):
        why = "pools every client's rows in one place" if pooled else "its client hook reads server state"
        raise ConfigError(f"fl.strategy={config.fl.strategy} {why}: it runs with runtime=local only")
    return strategy


class SingleClientRoundWarning(UserWarning):
    """A federation whose rounds sample one client: its averaging strategy averages nothing."""


def warn_single_client_rounds(config: RunConfig, strategy: Strategy) -> None:
    """Say so when ``fl.fraction`` samples one client per round out of several for a strategy that averages
    clients (S4's ``client_selection_frac 0.1`` of 10 clients did this silently: sequential fine-tuning, not
    FedAvg). A warning, not an error: cross-device studies sample few clients on purpose."""
    sampled = clients_per_round(config.fl.clients, config.fl.fraction)
    if config.fl.clients > 1 and sampled == 1 and strategy.kind == "global" and strategy.communicates:
        least = 2 / config.fl.clients
        warnings.warn(
            f"fl.fraction={config.fl.fraction} of fl.clients={config.fl.clients} samples 1 client per round, so "
            f"fl.strategy={config.fl.strategy} averages nothing (each round fine-tunes one client's copy); "
            f"fl.fraction>={least:.2g} samples at least two",
            SingleClientRoundWarning,
            stacklevel=2,
        )


def holds_client_rows(config: RunConfig) -> bool:
    """Does this run's server process hold the clients' rows? Not when each client brings its own file
    (``data.node_data``; ``data.client_files`` on Flower, where each node reads only its own): then the
    server reads only its own test rows (``data.server_source``) and the clients evaluate on their nodes."""
    d = config.data
    if d.node_data:
        return False
    return not d.client_files or launcher(config.runtime).in_process


def load_checked_rows(config: RunConfig) -> list | FileFederationRows:
    """The task rows of ``data.source`` (or of each client's file, ``data.client_files``), every value checked,
    and enough of them for the test split and the clients: everything about the data that needs no
    tokenizer, so it is found before the model loads."""
    d = config.data
    if d.client_files or d.node_data:
        files = d.client_files if holds_client_rows(config) else []
        return load_file_federation_rows(
            files=files or [],
            eval_files=d.client_eval_files if files else None,
            schema=d.schema_,
            task=d.task,
            template=d.template,
            val_fraction=d.val_fraction,
            batch_size=config.train.batch_size,
            server_source=d.server_source,
            server_schema=d.server_schema,
        )
    try:
        rows = load_rows(d.source, d.modules, d.task, d.template, d.schema_)
    except (PartitionError, DataSourceError):
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_row_counts(rows, d.source, d.test_size, d.max_rows, config.fl.clients)
    return rows


def check_head_fits(config: RunConfig, head: str) -> None:
    """The loaded model's head against the training options and the task."""
    if config.train.packing and head != "causal_lm":
        raise ConfigError(
            f"train.packing applies to decoder-only models; model.name={config.model.name!r} loads a {head} head"
        )
    if config.eval.suites and head not in GENERATIVE_HEADS:
        raise ConfigError(
            f"eval.suites {config.eval.suites} score generated code, but model.name={config.model.name!r} loads a "
            f"{head} head that does not generate (data.task={config.data.task}); use eval.suites with a "
            f"{' or '.join(GENERATIVE_HEADS)} model, or set eval.suites: []"
        )
    task = config.data.task
    if head == "seq2seq_lm" and not get_task(task).has_prompt:
        prompted = " or ".join(n for n, t in TASKS.items() if t.has_prompt and t.head == "causal_lm")
        raise ConfigError(
            f"data.task={task} has no prompt for an encoder to read; model.name={config.model.name!r} is an "
            f"encoder-decoder. Use a decoder-only model, or data.task={prompted}"
        )


def check_suites(config: RunConfig) -> None:
    """Every suite of ``eval.suites`` can pose its problems with these settings (``eval.suite_limit`` within
    its size), before the first round rather than at the first evaluation."""
    from fedpeft.evaluation.suites import suite_problems
    from fedpeft.experiment.code_eval import build_suites, suite_settings

    settings = suite_settings(config.eval, config.fl.seed)
    for suite in build_suites(config.eval):
        suite_problems(suite, settings)


def check_data_fits_task(config: RunConfig, data: FederatedData) -> None:
    """The split against what the task needs from it."""
    task = get_task(config.data.task)
    if config.flower.secure_aggregation and not holds_client_rows(config):
        raise ConfigError(
            "flower.secure_aggregation sizes SecAgg+'s weight range from every client's row count, which this "
            "server does not hold (data.node_data / data.client_files on Flower); not supported yet: rehearse it "
            "with the shared source (data.source) or run without secure aggregation"
        )
    if task.threshold_on_validation and not holds_client_rows(config):
        raise ConfigError(
            f"data.task={task.name} chooses its decision threshold on the clients' validation rows together, "
            f"which stay on their nodes here (data.client_files / data.node_data with runtime={config.runtime}); "
            "rehearse it with runtime=local, or use a task without a threshold"
        )
    if get_task(config.data.task).threshold_on_validation and not any(c.val for c in data.clients):
        raise ConfigError(
            f"data.task={config.data.task} chooses its decision threshold on the clients' validation rows, "
            f"but there are none; set data.val_fraction > 0"
        )


def check_packing(config: RunConfig, model: torch.nn.Module, pad_token_id: int) -> None:
    """Packed rows must not attend across each other in this model."""
    if config.train.packing:
        with as_config_error():
            check_packing_isolates(model, pad_token_id)


def check_strategy_fits(
    strategy: Strategy, config: RunConfig, model, data: FederatedData, context: ServerContext
) -> None:
    """Every check of a strategy against a built run (ValueError naming what is missing); ``setup`` and
    ``fedpeft compare``'s preflight both call it, so a comparison entry fails exactly as its run would."""
    strategy.check_round_size(clients_per_round(config.fl.clients, config.fl.fraction))
    check_lora_aggregation(config.fl.lora_aggregation, trainable_parameters(model))  # names only: no copy
    if config.fl.lora_aggregation == "stack":
        check_stackable(strategy)
    if strategy.kind == "personalised" and get_task(config.data.task).threshold_on_validation:
        empty = [c.client_id for c in data.clients if not c.val]
        if empty:
            raise ValueError(
                f"data.task={config.data.task} picks each personalised model's threshold on its own validation rows, "
                f"but client(s) {empty[:5]} have none; raise data.val_fraction"
            )
    strategy.bind(context)
