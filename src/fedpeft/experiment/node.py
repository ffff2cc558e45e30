"""A client's side of a run on a node: what a SuperNode (or a simulation's Ray actor) builds from the run's
configuration and its own node config, once per run.

Three cases, by where the node's rows come from:
- its own file (node config ``data-file``, optional ``eval-file`` and ``schema``: ``fedpeft supernode
  --data``): the node reads only that file, checks it here, and holds one client, the ``partition-id`` it
  was started with. A problem is reported without any of the file's content (the message travels to the
  server).
- ``data.client_files[partition-id]`` (a rehearsal on one machine, ``runtime: flower-sim``): the same
  function over the file the configuration names, so a rehearsal computes what the deployment will.
- otherwise the node rebuilds the whole seeded split of the shared source (a rehearsal that holds every
  client's rows) with the experiment's own :func:`~fedpeft.experiment.setup.setup`.
Client i's validation rows are carved with ``numpy_rng(seed, "data", i)`` in every case that reads a file.

A node may also change what costs memory but not the mathematics (``device``, ``micro-batch-size``,
``gradient-checkpointing``): gradient accumulation keeps the batch, so its updates are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedpeft.config.recipes import ConfigError, validate_config
from fedpeft.config.schema import RunConfig
from fedpeft.data.client_files import build_client_data, check_client_row_count, client_file_where, load_client_rows
from fedpeft.experiment import checks
from fedpeft.experiment.evaluate import client_evaluator
from fedpeft.experiment.setup import adapt_model, load_model, quiet_libraries, setup, training_args, transport_dtype
from fedpeft.fl.lora_ranks import ClientRanks
from fedpeft.runtime.flower.client import ClientSide, NodeConfig
from fedpeft.runtime.local import LocalRuntime
from fedpeft.seeding import numpy_rng

PARTITION_ID, DATA_FILE, EVAL_FILE, SCHEMA = "partition-id", "data-file", "eval-file", "schema"
DEVICE, MICRO_BATCH, CHECKPOINTING = "device", "micro-batch-size", "gradient-checkpointing"
NODE_SETTINGS = {DEVICE: ("model", "device"), MICRO_BATCH: ("train", "micro_batch_size")}
NODE_SETTINGS[CHECKPOINTING] = ("train", "gradient_checkpointing")


def client_side(config_text: str, node_config: NodeConfig) -> ClientSide:
    """This node's side of the run configured by ``config_text``."""
    config = node_settings(validate_config(yaml.safe_load(config_text)), node_config)
    files = node_files(config, node_config)
    if files is None:
        state = setup(config, Path(config.output.dir))
        return ClientSide(state.runtime, state.strategy.client_hook)
    quiet_libraries()
    strategy = checks.setup_checks(config)
    cid = client_id(node_config)
    d = config.data
    f = files
    rows = load_client_rows(f.file, f.schema, d.task, d.template, f.where, redact=f.redact)
    eval_rows = None
    if f.eval_file:
        eval_rows = load_client_rows(f.eval_file, f.schema, d.task, d.template, f.eval_where, redact=f.redact)
    # Before the model loads: a file too small for one batch is this client's failure now.
    check_client_row_count(len(rows), eval_rows is not None, d.val_fraction, config.train.batch_size, f.where)
    base = load_model(config)
    client = build_client_data(
        cid,
        rows,
        eval_rows,
        base.tokenizer,
        d.task,
        d.val_fraction,
        d.max_length,
        numpy_rng(config.fl.seed, "data", cid),
        config.train.batch_size,
        f.where,
    )
    model = adapt_model(config, base.model, base.head)
    args = training_args(config, base.head, base.tokenizer.pad_token_id)
    checks.check_packing(config, model, base.tokenizer.pad_token_id)
    ranks = ClientRanks.build(config.peft.r, config.peft.client_ranks)
    evaluator = client_evaluator(model, base.tokenizer, config, base.head, {cid: client})
    runtime = LocalRuntime(model, {cid: client.train}, args, config.fl.seed, ranks, transport_dtype(config), evaluator)
    return ClientSide(runtime, strategy.client_hook)


def client_id(node_config: NodeConfig) -> int:
    """The client a node holds: its ``partition-id``."""
    try:
        return int(node_config[PARTITION_ID])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"this SuperNode's node config has no whole-number {PARTITION_ID!r} (got {node_config.get(PARTITION_ID)!r});"
            " start it with fedpeft supernode --partition-id N"
        ) from None


@dataclass(frozen=True)
class NodeFiles:
    """Where a node's rows come from and how messages name them."""

    file: str
    eval_file: str | None
    schema: str | None
    where: str
    eval_where: str
    redact: bool
    """Messages must not hold any of the file's content: they travel to the server."""


def node_files(config: RunConfig, node_config: NodeConfig) -> NodeFiles | None:
    """This node's files: its own (``data-file``) or its entry of ``data.client_files``; None: the node
    rebuilds the shared source's split."""
    d = config.data
    if DATA_FILE in node_config:
        cid = client_id(node_config)
        file = str(node_config[DATA_FILE])
        eval_file = str(node_config[EVAL_FILE]) if EVAL_FILE in node_config else None
        schema = str(node_config[SCHEMA]) if SCHEMA in node_config else d.schema_
        name = f"node {cid}'s"
        eval_where = f"{name} eval-file {Path(eval_file).name!r}" if eval_file else ""
        return NodeFiles(file, eval_file, schema, f"{name} data-file {Path(file).name!r}", eval_where, True)
    if d.node_data:
        raise ConfigError(
            f"data.node_data=true: every client's rows are on its own SuperNode, but this node has no {DATA_FILE!r} "
            "in its node config; start it with fedpeft supernode --data FILE"
        )
    if not d.client_files:
        return None
    cid = client_id(node_config)
    if not 0 <= cid < len(d.client_files):
        raise ConfigError(f"{PARTITION_ID}={cid} is not a client of data.client_files (0..{len(d.client_files) - 1})")
    eval_file = d.client_eval_files[cid] if d.client_eval_files else None
    eval_where = client_file_where(cid, eval_file, "data.client_eval_files") if eval_file else ""
    return NodeFiles(
        d.client_files[cid], eval_file, d.schema_, client_file_where(cid, d.client_files[cid]), eval_where, False
    )


def node_settings(config: RunConfig, node_config: NodeConfig) -> RunConfig:
    """``config`` with this node's own device, micro-batch size and gradient checkpointing, where it sets them
    (they change memory, not the mathematics); a bad value names the node config key."""
    updates: dict[str, dict[str, Any]] = {}
    for key, (section, field) in NODE_SETTINGS.items():
        if key in node_config:
            updates.setdefault(section, {})[field] = node_config[key]
    if not updates:
        return config
    dumped = config.model_dump(mode="json")
    for section, fields in updates.items():
        dumped[section] |= fields
    try:
        return validate_config(dumped)
    except ConfigError as err:
        keys = ", ".join(k for k in NODE_SETTINGS if k in node_config)
        raise ConfigError(f"this SuperNode's node config ({keys}) does not fit the run: {err}") from None
