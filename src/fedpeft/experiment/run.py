"""One federated run from a config: ``setup() -> fit() -> finish()`` as plain functions.

The whole round reads top to bottom in :func:`fit`, one banner per phase. Runtimes only move tensors;
the strategy only does arithmetic; this module decides what happens when and writes it down.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedpeft.config.recipes import ConfigError, dump_config, load_run_config
from fedpeft.config.schema import RunConfig
from fedpeft.data.federated import ClientData, FederatedData, build_federated_data, check_row_counts, load_rows
from fedpeft.data.partition import PartitionError
from fedpeft.data.sources import DataSourceError
from fedpeft.data.text_tasks import (
    GENERATION_METRICS,
    SCORE_SPECIAL_TOKENS,
    TASK_HEADS,
    TASK_NUM_LABELS,
    THRESHOLD_ON_VALIDATION,
)
from fedpeft.errors import FedpeftError
from fedpeft.evaluation.metrics import (
    best_f1_threshold,
    classifier_outputs,
    evaluate_causal_lm,
    evaluate_classifier,
    evaluate_generation,
    evaluate_retrieval,
    output_probabilities,
)
from fedpeft.experiment.progress import RunProgress
from fedpeft.fl.client_round import RETRIEVAL_TEMPERATURE, ClientUpdate, LocalTrainingArgs
from fedpeft.fl.lora_aggregation import (
    aggregate_personalised_round,
    aggregate_round,
    check_lora_aggregation,
    check_stackable,
    stack_round,
)
from fedpeft.fl.lora_ranks import ClientRanks
from fedpeft.fl.sampling import clients_per_round, sample_clients
from fedpeft.fl.screening import TooFewUpdatesError, check_enough_updates, update_problem
from fedpeft.fl.strategies import ServerContext, Strategy, build_strategy
from fedpeft.models.base import ModelLoadError, autocast, load_base_model
from fedpeft.models.heads import check_packing_isolates
from fedpeft.models.peft_methods import (
    PeftSpec,
    apply_peft,
    enable_gradient_checkpointing,
    merge_pairs,
    reset_lora,
    save_stacked_lora,
    save_trained,
)
from fedpeft.models.state import get_trainable_state, set_trainable_state, trainable_parameters
from fedpeft.paths import atomic_write_text
from fedpeft.reporting import run_dir as rd
from fedpeft.reporting.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from fedpeft.reporting.plots import plot_losses, plot_mixing_matrix, plot_partition_heatmap
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
    """The global model; for a personalised strategy, the start of every client that has not trained yet."""
    client_states: dict[int, TensorDict] = field(default_factory=dict)
    """Personalised strategies: each client's own state once it has trained."""
    merged: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    """``lora_aggregation=stack``: per round, the stacked (B, A) per LoRA pair merged into the base."""
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


def peft_spec(config: RunConfig) -> PeftSpec:
    p = config.peft
    return PeftSpec(
        method=p.method,
        r=p.r,
        alpha=p.alpha,
        dropout=p.dropout,
        target_modules=p.target_modules,
        use_rslora=p.use_rslora,
        use_dora=p.use_dora,
        num_virtual_tokens=p.num_virtual_tokens,
        bottleneck_size=p.bottleneck_size,
        bottleneck_activation=p.bottleneck_activation,
    )


def load_checked_rows(config: RunConfig) -> list:
    """The task rows of ``data.source``, every value checked, and enough of them for the test split and the
    clients: everything about the data that needs no tokenizer, so it is found before the model loads."""
    d = config.data
    try:
        rows = load_rows(d.source, d.modules, d.task, d.template, d.schema_)
    except (PartitionError, DataSourceError):
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_row_counts(rows, d.source, d.test_size, d.max_rows, config.fl.clients)
    return rows


def build_data(config: RunConfig, tokenizer, rows: list | None = None) -> FederatedData:
    """The run's federated data: a pure function of the config (and its seed) and the tokenizer. ``rows``:
    :func:`load_checked_rows` of the config, if already loaded."""
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
        server_fraction=d.server_fraction,
        server_split=d.server_split,
        rows=rows,
    )


def setup_checks(config: RunConfig) -> Strategy:
    """The checks that need nothing loaded: the strategy, its settings and round size, and whether it can
    run on the chosen runtime. Returns the strategy."""
    with _as_config_error():
        strategy = build_strategy(config.fl.strategy, config.fl.strategy_args)
        strategy.check_round_size(clients_per_round(config.fl.clients, config.fl.fraction))
    if config.runtime != "local" and (strategy.pools_data or strategy.hook_reads_server_state):
        why = "pools every client's rows in one place" if strategy.pools_data else "its client hook reads server state"
        raise ConfigError(f"fl.strategy={config.fl.strategy} {why}: it runs with runtime=local only")
    return strategy


def setup(config: RunConfig, run_dir: Path) -> RunState:
    """Build the run in dependency order; every check that can fail does so before round 1."""
    seed = config.fl.seed
    quiet_libraries()
    # Strategy first: a wrong name or setting, or a round size it degenerates on, is found before
    # anything slow is loaded.
    strategy = setup_checks(config)
    # The rows next: a missing, unreadable or mistyped data file, or too few rows, is found before the
    # model is loaded.
    rows = load_checked_rows(config)
    # The base model comes before the split because the data is tokenized with its tokenizer. A new
    # classification head is initialised here, from the init generator.
    try:
        with torch_rng_scope(seed, "init", 1), _as_config_error():
            base = load_base_model(
                config.model.name,
                config.model.dtype,
                TASK_HEADS[config.data.task],
                TASK_NUM_LABELS.get(config.data.task, 2),
                config.model.device,
                config.model.quantization,
            )
    except OSError as err:  # a name the file system refuses outright (too long, unreadable)
        raise ModelLoadError(f"model.name={config.model.name[:200]!r}: {err.strerror or err}") from None
    head, tokenizer = base.head, base.tokenizer
    if config.train.packing and head != "causal_lm":
        raise ConfigError(
            f"train.packing applies to decoder-only models; model.name={config.model.name!r} loads a {head} head"
        )
    if head == "seq2seq_lm" and config.data.task == "completion":
        raise ConfigError(
            f"data.task=completion has no prompt for an encoder to read; model.name={config.model.name!r} is an "
            f"encoder-decoder. Use a decoder-only model, or data.task=instruction or code_to_text"
        )
    # Data is split once, from its own generator, so every round and every resume sees the same clients.
    try:
        data = build_data(config, tokenizer, rows)
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
        model = apply_peft(base.model, peft_spec(config), head)
        if config.train.gradient_checkpointing:
            enable_gradient_checkpointing(model)
    model.eval()
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
        mixed_precision=config.train.mixed_precision,
        pack_capacity=config.data.max_length if config.train.packing else None,
    )
    if config.train.packing:
        with _as_config_error():
            check_packing_isolates(model, tokenizer.pad_token_id)
    ranks = ClientRanks.build(config.peft.r, config.peft.client_ranks)
    transport = None if config.fl.transport_dtype == "native" else getattr(torch, config.fl.transport_dtype)
    runtime = LocalRuntime(model, [c.train for c in data.clients], args, seed, ranks, transport)
    # A strategy that needs server data, validation rows or categories says so now, before round 1.
    with _as_config_error():
        check_strategy_fits(strategy, config, model, tokenizer, data, args)
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


def split_evaluator(
    model: torch.nn.Module, tokenizer, config: RunConfig, head: str, threshold: float | None = None
) -> Callable[..., dict[str, float]]:
    """``evaluate(examples, distractors=())``: the task's metrics of the model as it is now on a split."""
    cfg = config.eval
    task = config.data.task
    pad = tokenizer.pad_token_id
    unscored = () if SCORE_SPECIAL_TOKENS[task] else tokenizer.all_special_ids

    def metrics(examples, distractors):
        if head == "embedding":
            return evaluate_retrieval(model, examples, cfg.batch_size, pad, RETRIEVAL_TEMPERATURE, distractors)
        if head == "sequence_classification":
            return evaluate_classifier(model, examples, cfg.batch_size, pad, TASK_NUM_LABELS[task], threshold)
        return evaluate_causal_lm(model, examples, cfg.batch_size, pad, unscored, head)

    def evaluate(examples, distractors=()):
        with autocast(next(model.parameters()).device, config.train.mixed_precision):
            return metrics(examples, distractors)

    return evaluate


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
    )


def check_strategy_fits(
    strategy: Strategy, config: RunConfig, model, tokenizer, data: FederatedData, args: LocalTrainingArgs
) -> None:
    """Every check of a strategy against a built run (ValueError naming what is missing); ``setup`` and
    ``fedpeft compare``'s preflight both call it, so a comparison entry fails exactly as its run would."""
    strategy.check_round_size(clients_per_round(config.fl.clients, config.fl.fraction))
    check_lora_aggregation(config.fl.lora_aggregation, trainable_parameters(model))  # names only: no copy
    if config.fl.lora_aggregation == "stack":
        check_stackable(strategy)
    if strategy.personalised and config.data.task in THRESHOLD_ON_VALIDATION:
        empty = [c.client_id for c in data.clients if not c.val]
        if empty:
            raise ValueError(
                f"data.task={config.data.task} picks each personalised model's threshold on its own validation rows, "
                f"but client(s) {empty[:5]} have none; raise data.val_fraction"
            )
    strategy.bind(server_context(config, model, tokenizer, data, args))


def evaluate_state(
    state: RunState, trainable: TensorDict, clients: Sequence[ClientData]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """One trainable state on the test split and on the validation split of each of ``clients`` (which
    also choose the decision threshold of tasks that need one)."""
    set_trainable_state(state.model, trainable)
    config = state.config
    task = config.data.task
    threshold = None
    if task in THRESHOLD_ON_VALIDATION:
        val = [e for c in clients for e in c.val]
        _, val_labels, val_probs = classifier_outputs(
            state.model, val, config.eval.batch_size, state.tokenizer.pad_token_id
        )
        threshold = best_f1_threshold(val_labels, val_probs[:, 1])
    evaluate = split_evaluator(state.model, state.tokenizer, config, state.runtime.args.head, threshold)
    test = evaluate(state.data.test, state.data.distractors)
    if task in GENERATION_METRICS:
        with autocast(next(state.model.parameters()).device, config.train.mixed_precision):
            test |= evaluate_generation(state.model, state.tokenizer, state.data.test, config.eval.max_new_tokens)
    per_client = {}
    if config.eval.clients:
        for c in clients:
            if c.val:
                per_client[f"client-{c.client_id}"] = evaluate(c.val)
    return test, per_client


def mean_metrics(results: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of metric dicts (the keys every one of them has)."""
    keys = [k for k in results[0] if all(k in r for r in results)]
    return {k: sum(float(r[k]) for r in results) / len(results) for k in keys}


Metrics = dict[str, float]


def evaluate_global(state: RunState) -> tuple[Metrics, dict[str, Metrics], dict[str, Metrics]]:
    """(test metrics, each client's validation metrics, each client's model's test metrics).

    A global strategy is scored with its global state (the third part is empty). A personalised one with
    each client's own state: on that client's validation rows, and on the test split as the mean over the
    clients' models (each one kept in the third part)."""
    clients = state.data.clients
    if not state.strategy.personalised:
        test, per_client = evaluate_state(state, state.global_state, clients)
        return test, per_client, {}
    tests, per_client = {}, {}
    for c in clients:
        test, own = evaluate_state(state, state.client_states.get(c.client_id, state.global_state), [c])
        tests[f"client-{c.client_id}"] = test
        per_client |= own
    return mean_metrics(list(tests.values())), per_client, tests


def _should_evaluate(config: RunConfig, rnd: int) -> bool:
    every = config.eval.every
    return rnd == config.fl.rounds or (every > 0 and rnd % every == 0)


def _wire_bytes(runtime: LocalRuntime, client_id: int, trainable: TensorDict) -> int:
    """Bytes of a state on the wire to or from a client: at its own LoRA rank when ranks differ, at
    ``fl.transport_dtype``."""
    if runtime.ranks:
        return runtime.ranks.wire_bytes(trainable, client_id, runtime.transport)
    return payload_bytes(trainable, runtime.transport)


def _client_record(rnd: int, u: ClientUpdate, bytes_up: int, bytes_down: int) -> dict[str, Any]:
    """A client's line in the log."""
    return {
        "type": "client",
        "round": rnd,
        "client": u.client_id,
        "examples": u.num_examples,
        "steps": u.num_steps,
        "train_loss": u.train_loss,
        "bytes_up": bytes_up,
        "bytes_down": bytes_down,
        "seconds": round(u.seconds, 4),
    }


def _train(
    state: RunState, rnd: int, client_ids: list[int], progress: RunProgress, failed: dict[int, str]
) -> list[ClientUpdate]:
    """This round's client updates: each sampled client from the global state (or its own, for a
    personalised strategy), or one update on their pooled rows (the centralised baseline). Clients the
    runtime lost are entered in ``failed`` with the reason."""
    strategy, current = state.strategy, state.global_state
    if strategy.pools_data:
        return state.runtime.train_pooled(
            rnd, client_ids, current, on_client_start=progress.start_client, on_step=progress.client_step
        )
    return state.runtime.train_round(
        rnd,
        client_ids,
        current,
        on_client_start=progress.start_client,
        on_step=progress.client_step,
        hook_for=strategy.client_hook,
        client_states=state.client_states if strategy.personalised else None,
        on_client_failed=failed.__setitem__,
    )


def usable_updates(
    state: RunState,
    rnd: int,
    updates: list[ClientUpdate],
    sent: dict[int, TensorDict],
    failed: dict[int, str],
    progress: RunProgress,
) -> list[ClientUpdate]:
    """The updates that fit the adapter they were trained from and are finite; the others join ``failed``.
    Each dropped client is logged (a ``client_failure`` record) and reported; fewer than ``fl.min_clients``
    usable updates end the run with every reason (its completed rounds stay, ready for ``--resume``)."""
    usable = []
    for u in updates:
        problem = update_problem(u.state, sent.get(u.client_id, state.global_state))
        if problem is None:
            usable.append(u)
        else:
            failed[u.client_id] = f"update rejected: {problem}"
    for cid, reason in sorted(failed.items()):
        state.log.append({"type": "client_failure", "round": rnd, "client": cid, "reason": reason})
        progress.message(f"round {rnd}: client {cid} dropped: {reason}")
    check_enough_updates(rnd, len(usable), state.config.fl.min_clients, failed)
    return usable


def merge_stacked_round(
    state: RunState, rnd: int, stacked: dict[str, tuple[torch.Tensor, torch.Tensor]], rest: TensorDict
) -> TensorDict:
    """Merge a round's stacked pairs into the frozen base and return the next global state: a fresh LoRA
    adapter (seeded by the round) plus the strategy's aggregate of the other trainable tensors."""
    # Kept (and merged) at the adapter's dtype: what clients download, what the checkpoint holds, and
    # what a resume re-merges are the same tensors.
    dtype = next(iter(state.global_state.values())).dtype
    stacked = {k: (b.to(dtype), a.to(dtype)) for k, (b, a) in stacked.items()}
    merge_pairs(state.model, stacked)
    state.merged[rnd] = stacked
    with torch_rng_scope(state.config.fl.seed, "init", 2, rnd):  # ("init", 1) seeded the base model's head
        reset_lora(state.model)
    return get_trainable_state(state.model) | {k: v.clone() for k, v in rest.items()}


def stack_download_bytes(state: RunState, client_id: int, rnd: int) -> int:
    """Stacked pairs a client downloads before round ``rnd``: every round merged since it last trained
    (its base must hold them all), found by replaying the seeded sampling of the earlier rounds."""
    cfg = state.config.fl
    last = 0
    for q in range(rnd - 1, 0, -1):
        if client_id in sample_clients(cfg.clients, cfg.fraction, numpy_rng(cfg.seed, "sampling", q)):
            last = q
            break
    missing = [state.merged[q] for q in range(max(last, 1), rnd) if q in state.merged]
    transport = state.runtime.transport
    return sum(payload_bytes({"B": b, "A": a}, transport) for pairs in missing for b, a in pairs.values())


def fit(state: RunState, progress: RunProgress) -> None:
    """The round loop, from the round after the last completed one to ``fl.rounds``."""
    cfg = state.config
    strategy = state.strategy
    if state.completed_round == 0 and cfg.eval.every > 0 and not any(r.get("round") == 0 for r in state.log.read()):
        test, per_client, client_test = evaluate_global(state)
        state.log.append(
            {"type": "round", "round": 0, "eval": test, "client_eval": per_client, "client_test": client_test}
        )
        progress.round_line(0, [], None, test, 0, 0.0)
    progress.start_rounds(cfg.fl.rounds, state.completed_round)
    for rnd in range(state.completed_round + 1, cfg.fl.rounds + 1):
        started = time.perf_counter()
        # ---- sample: a generator per round, so round r picks the same clients after a resume ----
        client_ids = sample_clients(cfg.fl.clients, cfg.fl.fraction, numpy_rng(cfg.fl.seed, "sampling", rnd))
        # ---- train: every sampled client from the global state (personalised: from its own) ----
        sent = {u: state.client_states.get(u, state.global_state) for u in client_ids}
        failed: dict[int, str] = {}
        updates = usable_updates(state, rnd, _train(state, rnd, client_ids, progress, failed), sent, failed, progress)
        client_ids = [c for c in client_ids if c not in failed]  # the round's record names the aggregated ones
        # ---- aggregate: the strategy, over LoRA pairs or their products ----
        mixing = None
        if strategy.personalised:
            mixed, mixing, aggregation = aggregate_personalised_round(strategy, cfg.fl.lora_aggregation, updates, rnd)
            state.client_states |= {u.client_id: m for u, m in zip(updates, mixed, strict=True)}
        elif cfg.fl.lora_aggregation == "stack":
            stacked, rest, aggregation = stack_round(strategy, state.global_state, updates, rnd, state.runtime.ranks)
            state.global_state = merge_stacked_round(state, rnd, stacked, rest)
        else:
            state.global_state, aggregation = aggregate_round(
                strategy, cfg.fl.lora_aggregation, state.global_state, updates, rnd
            )
        # ---- evaluate ----
        test, per_client, client_test = evaluate_global(state) if _should_evaluate(cfg, rnd) else (None, {}, {})
        # ---- record and checkpoint: the round counts as done only once its checkpoint is in place ----
        # Besides the states: the strategy's extra tensors each way (control variates) and, when stacking,
        # every stacked pair merged since the client last trained.
        extra = strategy.extra_payload_bytes(state.global_state, state.runtime.transport)
        records = []
        for u in updates:
            stacks = stack_download_bytes(state, u.client_id, rnd) if state.merged else 0
            up = _wire_bytes(state.runtime, u.client_id, u.state) + extra
            down = _wire_bytes(state.runtime, u.client_id, sent.get(u.client_id, {})) + extra + stacks
            records.append(_client_record(rnd, u, up, down))
        if not strategy.communicates:
            records = [r | {"bytes_up": 0, "bytes_down": 0} for r in records]
        for r in records:
            state.log.append(r)
        n_examples = sum(u.num_examples for u in updates)
        train_loss = sum(u.train_loss * u.num_examples for u in updates) / n_examples
        up, down = sum(r["bytes_up"] for r in records), sum(r["bytes_down"] for r in records)
        seconds = time.perf_counter() - started
        state.log.append(
            {
                "type": "round",
                "round": rnd,
                "clients": client_ids,
                **({"failed": {str(c): why for c, why in sorted(failed.items())}} if failed else {}),
                "examples": n_examples,
                "train_loss": train_loss,
                "eval": test,
                "client_eval": per_client,
                "client_test": client_test,
                "bytes_up": up,
                "bytes_down": down,
                "seconds": round(seconds, 4),
                **({"mixing": mixing.tolist()} if mixing is not None else {}),
                **aggregation,
            }
        )
        save_checkpoint(
            state.run_dir,
            Checkpoint(
                round=rnd,
                global_state=state.global_state,
                strategy_state=strategy.state_dict(),
                extra={
                    "rng": "derived from fl.seed per (purpose, round, client); no state to restore",
                    "config": cfg.model_dump(mode="json"),
                },
                client_states=state.client_states,
                merged=state.merged,
            ),
            keep=cfg.output.keep_checkpoints,
        )
        state.completed_round = rnd
        progress.round_line(rnd, client_ids, train_loss, test, up + down, seconds)
        progress.advance_round()


def finish(state: RunState, status: str, started: float, error: str | None = None) -> dict[str, Any]:
    """Write the PEFT adapter, loss plot and summary.json (with ``error``, why a failed run stopped); return
    the summary."""
    run_dir = state.run_dir
    rounds = [r for r in state.log.read() if r.get("type") == "round"]
    if status == "completed":
        # A personalised run has one adapter per client (adapter/client-N); a global run one adapter.
        adapters = {rd.ADAPTER_DIR: state.global_state}
        if state.strategy.personalised:
            adapters = {
                f"{rd.ADAPTER_DIR}/client-{c.client_id}": state.client_states.get(c.client_id, state.global_state)
                for c in state.data.clients
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
    if rounds:
        plot_losses(rounds, run_dir / rd.LOSS_PLOT)
    mixed = [r for r in rounds if r.get("mixing")]
    if mixed:
        plot_mixing_matrix(mixed[-1]["mixing"], mixed[-1]["clients"], mixed[-1]["round"], run_dir / rd.MIXING_PLOT)
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
        "final_client_eval": evals[-1].get("client_eval") if evals else None,
        "bytes_up": sum(r.get("bytes_up", 0) for r in rounds),
        "bytes_down": sum(r.get("bytes_down", 0) for r in rounds),
        "rounds_seconds": round(sum(r.get("seconds", 0.0) for r in rounds), 3),
        "wall_seconds_this_process": round(time.perf_counter() - started, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_initialized() else None,
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "trainable_percent": round(100.0 * trainable / total_params, 4),
        "adapter": str(run_dir / rd.ADAPTER_DIR) if status == "completed" else None,
        **{k: rounds[-1][k] for k in ("dp_epsilon", "dp_delta") if rounds and k in rounds[-1]},
        **({"error": error} if error else {}),
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
    """Load the newest complete checkpoint into the built run, in memory only: a checkpoint that does not fit
    the model (another run's, another configuration's) is a :class:`CheckpointError` before anything is
    written. The log is cut to it afterwards, by :func:`_sync_log_to_checkpoints`."""
    state.completed_round = _checkpointed_round(state.run_dir)
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
    done = _checkpointed_round(run_dir)
    if config.fl.rounds < done:
        raise ConfigError(f"fl.rounds={config.fl.rounds} is below the {done} rounds {run_dir} has already completed")
    check_resumable(run_dir, config)
    return config


def run_experiment(
    config: RunConfig | None = None,
    *,
    resume_dir: Path | None = None,
    overrides: list[str] | None = None,
    quiet: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Start a new run from ``config`` or continue the one in ``resume_dir``. Returns (run_dir, summary).
    With ``runtime: flower-sim`` the same round loop runs as the ServerApp of a Flower simulation; with
    ``flower-deployment`` it is submitted to a SuperLink and runs there as a deployed ServerApp."""
    if resume_dir is not None:
        config = resume_config(Path(resume_dir), overrides or [])
    elif config is None:
        raise ValueError("run_experiment needs a config or a resume_dir")
    if config.runtime == "flower-sim":
        from fedpeft.experiment.flower_app import simulate

        return simulate(config, lambda wrap: _run(config, resume_dir, quiet, wrap))
    if config.runtime == "flower-deployment":
        from fedpeft.experiment.flower_app import deploy

        setup_checks(config)  # bad input fails here, not in the SuperLink's ServerApp
        return deploy(config, resume_dir, quiet)
    return _run(config, resume_dir, quiet)


def _run(
    config: RunConfig,
    resume_dir: Path | None,
    quiet: bool,
    wrap_runtime: Callable[[LocalRuntime], Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """One run in this process; ``wrap_runtime`` replaces the local runtime (by the Flower one)."""
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
        _restore(state)
    if wrap_runtime is not None:
        state.runtime = wrap_runtime(state.runtime)
    run_dir = state.run_dir = Path(resume_dir) if resume_dir else rd.new_run_dir(Path(config.output.dir), config.recipe)
    progress.message(f"run directory: {run_dir}")
    device = next(state.model.parameters()).device
    if config.train.mixed_precision != "none" and device.type == "cpu":
        progress.message(
            f"note: train.mixed_precision={config.train.mixed_precision} on the CPU; CPUs without half-precision "
            "matrix units run autocast far slower than float32 (10x in benchmarks/memory_speed.py here)"
        )
    atomic_write_text(run_dir / rd.CONFIG_FILE, dump_config(config))
    rd.write_json(run_dir / rd.PARTITION_FILE, state.data.report)
    plot_partition_heatmap(state.data.report["categories"], run_dir / rd.PARTITION_PLOT)
    if resume_dir is not None:
        _sync_log_to_checkpoints(state)
        progress.message(f"resuming after round {state.completed_round} of {config.fl.rounds}")
    try:
        with progress:
            fit(state, progress)
    except KeyboardInterrupt:
        _sync_log_to_checkpoints(state)
        finish(state, "interrupted", started)
        raise RunInterrupted(run_dir, state.completed_round) from None
    except TooFewUpdatesError as err:
        _sync_log_to_checkpoints(state)
        message = (
            f"{err}. {run_dir} holds every round up to {state.completed_round}; once the clients are back, "
            f"continue with: fedpeft run --resume {run_dir}"
        )
        finish(state, "failed", started, error=message)
        raise TooFewUpdatesError(message) from None
    except BaseException as err:
        _sync_log_to_checkpoints(state)
        finish(state, "failed", started, error=f"{type(err).__name__}: {err}")
        raise
    summary = finish(state, "completed", started)
    progress.message(f"adapter: {summary['adapter']}")
    return run_dir, summary
