"""Building a run from its configuration, in dependency order, each step's reason in a comment.

The builders here are the only code that reads the config object (DESIGN: "config is read by experiment
only"): each turns its section into the flat, typed arguments of a lower layer's builder, once.
:func:`setup` calls them, with every check of :mod:`fedpeft.experiment.checks` before the step that could
fail later, so bad input is reported before round 1 and before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedpeft.config.schema import RunConfig
from fedpeft.data.client_files import FileFederationRows, build_file_federation
from fedpeft.data.federated import FederatedData, build_federated_data
from fedpeft.data.partition import PartitionError
from fedpeft.data.sources import DataSourceError
from fedpeft.data.tasks import get_task
from fedpeft.evaluation.metrics import output_probabilities
from fedpeft.experiment import checks
from fedpeft.experiment.evaluate import client_evaluator, split_evaluator
from fedpeft.fl.client_round import LocalTrainingArgs
from fedpeft.fl.lora_ranks import ClientRanks
from fedpeft.fl.sampling import clients_per_round
from fedpeft.fl.strategies import ServerContext, Strategy
from fedpeft.models.base import ModelLoadError, enable_gradient_checkpointing, load_base_model
from fedpeft.models.methods import PeftSpec, apply_peft
from fedpeft.models.state import get_trainable_state, set_trainable_state
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.trackers import TrackerSet
from fedpeft.runtime.base import Runtime
from fedpeft.runtime.local import LocalRuntime
from fedpeft.seeding import numpy_rng, torch_rng_scope
from fedpeft.tensors import TensorDict


@dataclass
class RunState:
    """Everything a run holds in memory between rounds."""

    config: RunConfig
    run_dir: Path
    model: torch.nn.Module
    tokenizer: Any
    data: FederatedData
    strategy: Strategy
    runtime: Runtime
    """What moves states to the clients and back: this process (``local``) or Flower."""
    context: ServerContext
    """What the strategy may use beyond the updates (server rows, scoring functions); passed to every call."""
    args: LocalTrainingArgs
    """Each client's local training settings."""
    global_state: TensorDict
    """The global model; for a personalised strategy, the start of every client that has not trained yet."""
    ranks: ClientRanks | None = None
    """Clients of different LoRA ranks (``peft.client_ranks``); None: all at the global rank."""
    transport: torch.dtype | None = None
    """``fl.transport_dtype`` (None: native): the dtype states travel, and are counted, at."""
    client_states: dict[int, TensorDict] = field(default_factory=dict)
    """Personalised strategies: each client's own state once it has trained."""
    merged: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    """``lora_aggregation=stack``: per round, the stacked (B, A) per LoRA pair merged into the base."""
    completed_round: int = 0
    trackers: TrackerSet = field(default_factory=TrackerSet)
    """``output.loggers``, once the run directory exists: every record appended to the log goes to them too."""

    @property
    def log(self) -> rd.MetricsLog:
        return rd.MetricsLog(self.run_dir / rd.METRICS_FILE, self.trackers)


def peft_spec(config: RunConfig) -> PeftSpec:
    p = config.peft
    return PeftSpec(
        method=p.method,
        r=p.r,
        alpha=p.alpha,
        dropout=p.dropout,
        target_modules=p.target_modules,
        settings=p.method_settings(),
    )


def build_data(config: RunConfig, tokenizer, rows: list | FileFederationRows | None = None) -> FederatedData:
    """The run's federated data: a pure function of the config (and its seed) and the tokenizer. ``rows``:
    :func:`~fedpeft.experiment.checks.load_checked_rows` of the config, if already loaded. With clients'
    own files, client i from its file; a server that does not hold them gets only its own test rows."""
    d = config.data
    if d.client_files or d.node_data:
        files = d.client_files if checks.holds_client_rows(config) else []
        return build_file_federation(
            tokenizer=tokenizer,
            files=files or [],
            eval_files=d.client_eval_files if files else None,
            schema=d.schema_,
            task=d.task,
            template=d.template,
            val_fraction=d.val_fraction,
            max_length=d.max_length,
            batch_size=config.train.batch_size,
            seed=config.fl.seed,
            test_size=d.test_size,
            server_source=d.server_source,
            server_schema=d.server_schema,
            retrieval_candidates=config.eval.retrieval_candidates,
            rows=rows if isinstance(rows, FileFederationRows) else None,
        )
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
        server_fraction=d.server_fraction,
        server_split=d.server_split,
        rows=rows,
        partition_key=d.partition_key,
    )


def training_args(config: RunConfig, head: str, pad_id: int) -> LocalTrainingArgs:
    """Every client's local training settings (``train.*``, and the prompt masking of ``data``)."""
    t = config.train
    return LocalTrainingArgs(
        epochs=t.epochs,
        max_steps=t.max_steps,
        batch_size=t.batch_size,
        micro_batch_size=t.micro_batch_size,
        lr=t.lr,
        schedule=t.schedule,
        warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        mask_prompt=not config.data.train_on_inputs,
        pad_id=pad_id,
        head=head,
        mixed_precision=t.mixed_precision,
        pack_capacity=config.data.max_length if t.packing else None,
    )


def transport_dtype(config: RunConfig) -> torch.dtype | None:
    return None if config.fl.transport_dtype == "native" else getattr(torch, config.fl.transport_dtype)


def server_context(config: RunConfig, model, tokenizer, data: FederatedData, args: LocalTrainingArgs) -> ServerContext:
    """What strategies may use beyond the updates: the server's rows, the clients' validation rows and
    categories, and scoring functions over a trainable state (loaded into the one model)."""
    evaluate = split_evaluator(model, tokenizer, config, args.head)

    def loss(trainable: TensorDict, examples) -> float:
        set_trainable_state(model, trainable)
        return float(evaluate(examples)["loss"])

    def probabilities(trainable: TensorDict, examples) -> torch.Tensor:
        set_trainable_state(model, trainable)
        return output_probabilities(model, examples, config.eval.batch_size, tokenizer.pad_token_id, args.head)

    return ServerContext(
        model=model,
        args=args,
        seed=config.fl.seed,
        server_data=data.server,
        client_val={c.client_id: c.val for c in data.clients},
        client_categories={c.client_id: c.categories for c in data.clients},
        loss=loss,
        probabilities=probabilities,
        lora_aggregation=config.fl.lora_aggregation,
        heterogeneous_ranks=ClientRanks.build(config.peft.r, config.peft.client_ranks) is not None,
        sample_rate=clients_per_round(config.fl.clients, config.fl.fraction) / config.fl.clients,
        client_rows_on_server=checks.holds_client_rows(config),
    )


def quiet_libraries() -> None:
    """Keep the run's own progress readable: no per-file progress bars or deprecation chatter from the
    libraries underneath (their errors still surface)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")


def load_model(config: RunConfig) -> Any:
    """The base model with the task's head and its tokenizer. A new classification head is initialised from
    the ("init", 1) generator, so every process that loads it (server, nodes) starts from the same head."""
    task = get_task(config.data.task)
    try:
        with torch_rng_scope(config.fl.seed, "init", 1), checks.as_config_error():
            return load_base_model(
                config.model.name,
                config.model.dtype,
                task.head,
                task.num_labels or 2,
                config.model.device,
                config.model.quantization,
            )
    except OSError as err:  # a name the file system refuses outright (too long, unreadable)
        raise ModelLoadError(f"model.name={config.model.name[:200]!r}: {err.strerror or err}") from None


def adapt_model(config: RunConfig, base_model: torch.nn.Module, head: str) -> torch.nn.Module:
    """The PEFT model: the adapter's initial weights come from the ("init") generator, so the same seed
    gives the same start wherever it is built."""
    with torch_rng_scope(config.fl.seed, "init"), checks.as_config_error():
        model = apply_peft(base_model, peft_spec(config), head)
        if config.train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
    model.eval()
    return model


def setup(config: RunConfig, run_dir: Path) -> RunState:
    """Build the run in dependency order; every check that can fail does so before round 1."""
    seed = config.fl.seed
    quiet_libraries()
    # Strategy first: a wrong name or setting, or a round size it degenerates on, is found before
    # anything slow is loaded.
    strategy = checks.setup_checks(config)
    # The rows next: a missing, unreadable or mistyped data file, or too few rows, is found before the
    # model is loaded. A server whose clients bring their own files reads only its own test rows.
    rows = checks.load_checked_rows(config)
    # The base model comes before the split because the data is tokenized with its tokenizer.
    base = load_model(config)
    head, tokenizer = base.head, base.tokenizer
    checks.check_head_fits(config, head)
    checks.check_suites(config)
    # Data is split once, from its own generator, so every round and every resume sees the same clients.
    try:
        data = build_data(config, tokenizer, rows)
    except (PartitionError, DataSourceError):
        raise
    except ValueError as err:
        raise checks.ConfigError(str(err)) from None
    checks.check_data_fits_task(config, data)
    model = adapt_model(config, base.model, head)
    args = training_args(config, head, tokenizer.pad_token_id)
    checks.check_packing(config, model, tokenizer.pad_token_id)
    ranks = ClientRanks.build(config.peft.r, config.peft.client_ranks)
    transport = transport_dtype(config)
    by_id = {c.client_id: c for c in data.clients}
    evaluator = client_evaluator(model, tokenizer, config, head, by_id)
    runtime = LocalRuntime(model, {i: c.train for i, c in by_id.items()}, args, seed, ranks, transport, evaluator)
    # A strategy that needs server data, validation rows or categories says so now, before round 1.
    context = server_context(config, model, tokenizer, data, args)
    with checks.as_config_error():
        checks.check_strategy_fits(strategy, config, model, data, context)
    return RunState(
        config=config,
        run_dir=run_dir,
        model=model,
        tokenizer=tokenizer,
        data=data,
        strategy=strategy,
        runtime=runtime,
        context=context,
        args=args,
        global_state=get_trainable_state(model),
        ranks=ranks,
        transport=transport,
    )
