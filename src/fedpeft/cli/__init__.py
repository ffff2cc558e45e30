"""The ``fedpeft`` command: a thin shell over :mod:`fedpeft.experiment`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from fedpeft.config.recipes import load_config, with_offline
from fedpeft.errors import FedpeftError

INTERRUPTED = 130
"""Exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it."""

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated parameter-efficient fine-tuning.")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def _reported(interrupted: str = "") -> Iterator[None]:
    """Report a user-facing error as ``error: <message>`` with its exit code (2; an interrupted run 130, with
    ``interrupted`` appended). Anything else is a bug in fedpeft and keeps its traceback."""
    try:
        yield
    except FedpeftError as err:
        _fail(f"{err}{interrupted}" if err.exit_code == INTERRUPTED else str(err), code=err.exit_code)


OfflineOption = Annotated[
    bool,
    typer.Option(
        "--offline",
        help="Use the recipe's offline variant (RECIPE@offline): built-in stand-in model and data, no hub access.",
    ),
]


@app.command()
def recipes() -> None:
    """List the shipped recipes, grouped by the seed system each reproduces, with their variants
    (run one as RECIPE@variant; --offline adds @offline)."""
    from fedpeft.config.recipes import recipe_groups

    for title, rows in recipe_groups().items():
        typer.echo(title)
        width = max(len(name) for name, _, _ in rows)
        for name, description, variants in rows:
            shown = f"  [@{' @'.join(variants)}]" if variants else ""
            typer.echo(f"  {name:<{width}}  {description}{shown}")


def _list_parts(rows: list[tuple[str, str, list[tuple[str, object, str]]]], width: int = 14) -> None:
    """One line per registered part (name and summary), then each of its settings with default and help."""
    for name, summary, settings in rows:
        typer.echo(f"{name:<{width}} {summary}")
        for key, default, help_text in settings:
            typer.echo(f"{'':<{width + 2}}{key} = {default}: {help_text}")


@app.command()
def strategies() -> None:
    """List the server strategies and their settings (set them with --set fl.strategy_args.NAME=VALUE)."""
    from fedpeft.fl.strategies import describe_strategies

    _list_parts(describe_strategies())


@app.command()
def methods() -> None:
    """List the PEFT methods and their settings (set them with --set peft.method_args.NAME=VALUE)."""
    from fedpeft.models.methods import describe_methods

    _list_parts(describe_methods())


@app.command()
def tasks() -> None:
    """List the tasks (choose one with --set data.task=NAME)."""
    from fedpeft.data.tasks import describe_tasks

    _list_parts(describe_tasks(), width=20)


@app.command()
def partitions() -> None:
    """List the partition schemes (choose one with --set data.partition=NAME)."""
    from fedpeft.data.partition import describe_partitions

    _list_parts(describe_partitions(), width=12)


@app.command()
def runtimes() -> None:
    """List the runtimes (choose one with --set runtime=NAME)."""
    from fedpeft.runtime.base import RUNTIMES

    _list_parts(RUNTIMES.describe(), width=18)


@app.command("config")
def show_config(
    recipe: Annotated[str, typer.Argument(help="Recipe name or path to a YAML file.")] = "default",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key (repeatable).")] = None,
    offline: OfflineOption = False,
) -> None:
    """Print the fully resolved configuration of a recipe plus overrides, as YAML."""
    from fedpeft.config.recipes import dump_config

    with _reported():
        typer.echo(dump_config(load_config(with_offline(recipe, offline), list(set_ or []))), nl=False)


@app.command()
def run(
    recipe: Annotated[
        str, typer.Argument(help="Recipe name (see `fedpeft recipes`) or path to a YAML file.")
    ] = "default",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: --set fl.rounds=3 (repeatable).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory after its last complete round.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress output.")] = False,
    offline: OfflineOption = False,
) -> None:
    """Run a federated fine-tuning job."""
    from fedpeft.experiment.run import run_experiment
    from fedpeft.testing import fault_drill  # FEDPEFT_INJECT_FAULT's drills reach flower-sim's clients too

    overrides = list(set_ or [])
    if resume is not None and not resume.is_dir():
        _fail(f"--resume {resume}: no such run directory")
    with _reported():
        if resume is not None:
            run_dir, summary = run_experiment(
                resume_dir=resume, overrides=overrides, quiet=quiet, client_fault=fault_drill
            )
        else:
            config = load_config(with_offline(recipe, offline), overrides)
            run_dir, summary = run_experiment(config, quiet=quiet, client_fault=fault_drill)
    final = summary["final_eval"] or {}
    typer.echo(
        f"done: {summary['rounds_completed']} rounds, eval loss {final.get('loss', float('nan')):.4f}, "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB -> {run_dir}"
    )


@app.command()
def compare(
    recipe: Annotated[str, typer.Argument(help="Recipe name or path to a YAML file.")] = "default",
    strategies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated entries, each a strategy name with optional settings: "
            "fedavg,fedprox:mu=0.1,trust:weights=dynamic-ref,local,centralised"
        ),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            help="Compare PEFT methods instead, under the recipe's strategy: comma-separated methods with optional "
            "peft settings, e.g. lora,lora:use_dora=true,ia3,prompt,adapter_h:bottleneck_size=32,full"
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key for every entry (repeatable).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Comparison directory (default: a new one under output.dir).")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No per-round progress output.")] = True,
    isolate: Annotated[
        bool, typer.Option(help="Run each entry in its own process, so its peak memory is its own.")
    ] = True,
    seeds: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated seeds (fl.seed: split, sampling, init), e.g. 0,1,2: every entry runs on each; "
            "the table shows mean ± std and a paired 95% interval against --reference. Default: the recipe's fl.seed."
        ),
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(help="The entry the others are measured against over seeds (default: the first entry)."),
    ] = None,
    offline: OfflineOption = False,
) -> None:
    """Run several strategies or PEFT methods on one recipe (same split, seed and step budget) and write a
    table (metric, trainable parameters, MB per round, peak memory, time) and a plot; with --seeds, on each seed.
    Without --strategies or --methods: the recipe's own baselines (`compare:` in its YAML), else
    fedavg,local,centralised."""
    from fedpeft.config.recipes import recipe_compare_entries
    from fedpeft.experiment.compare import COMPARE_PLOT, COMPARE_TABLE
    from fedpeft.experiment.compare import compare as run_compare

    with _reported(interrupted="; finished entries are in the comparison table"):
        if strategies is None and methods is None:
            kind, entries = recipe_compare_entries(recipe) or ("strategies", "fedavg,local,centralised")
            strategies, methods = (entries, None) if kind == "strategies" else (None, entries)
            typer.echo(f"entries ({kind}): {entries}")
        root, _ = run_compare(
            with_offline(recipe, offline),
            strategies,
            list(set_ or []),
            out,
            quiet=quiet,
            log=typer.echo,
            methods=methods,
            isolate=isolate,
            seeds=seeds,
            reference=reference,
        )
    typer.echo((root / COMPARE_TABLE).read_text(), nl=False)
    typer.echo(f"table: {root / COMPARE_TABLE}  plot: {root / COMPARE_PLOT}")


@app.command()
def corpus(top: Annotated[int, typer.Option(help="Modules to list.")] = 15) -> None:
    """Size report of the built-in stdlib corpus: functions, splits and the largest modules."""
    from fedpeft.data.stdlib_corpus import corpus_report, corpus_split, load_stdlib_corpus, stdlib_dir

    records = load_stdlib_corpus()
    splits = {s: sum(corpus_split(r) == s for r in records) for s in ("train", "valid", "test")}
    per_module = corpus_report(records)
    typer.echo(f"{len(records)} documented functions from {stdlib_dir()} in {len(per_module)} top-level modules")
    typer.echo(f"{sum(len(r.code) for r in records) / 1e6:.2f} M characters; splits: {splits}")
    for module, count in list(per_module.items())[:top]:
        typer.echo(f"  {module:<20} {count}")


@app.command()
def partition(
    recipe: Annotated[str, typer.Argument(help="Recipe name or path to a YAML file.")] = "default",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key (repeatable).")] = None,
    png: Annotated[Path, typer.Option(help="Where to write the clients x categories heatmap.")] = Path("partition.png"),
    offline: OfflineOption = False,
) -> None:
    """Show how a recipe splits its data: a clients x categories table and a heatmap PNG."""
    from fedpeft.experiment.partition_report import partition_report

    with _reported():
        partition_report(load_config(with_offline(recipe, offline), list(set_ or [])), png)


@app.command()
def pretrain(
    size: Annotated[str, typer.Option(help="Built-in size to pretrain.")] = "small",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 3000,
    tokens_per_batch: Annotated[int, typer.Option(help="Padded tokens per optimizer step (at most).")] = 8192,
    seq_len: Annotated[int, typer.Option(help="Longer functions are cut into several sequences.")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    seed: Annotated[int, typer.Option(help="Seed for init, batch order and dropout.")] = 0,
    max_minutes: Annotated[float | None, typer.Option(help="Stop cleanly after this many minutes.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: the package's shipped copy).")] = None,
) -> None:
    """Pretrain a built-in code model and its tokenizer on the stdlib corpus 'train' split."""
    from fedpeft.experiment.pretrain import PretrainArgs
    from fedpeft.experiment.pretrain import pretrain as run_pretrain
    from fedpeft.models.builtin import BUILTIN_SIZES, pretrained_dir

    sizes = [name for name, spec in BUILTIN_SIZES.items() if spec.family == "llama"]
    if size not in sizes:
        _fail(f"unknown --size {size!r}; valid: {', '.join(sizes)}")
    args = PretrainArgs(
        size=size,
        steps=steps,
        tokens_per_batch=tokens_per_batch,
        seq_len=seq_len,
        lr=lr,
        seed=seed,
        max_minutes=max_minutes,
        threads=threads,
    )
    run_pretrain(args, out or pretrained_dir(size), log=typer.echo)


def _exec_flower(command: list[str], dry_run: bool) -> None:
    """Show the Flower command, then replace this process by it (Ctrl-C and signals reach it directly)."""
    import os
    import shlex

    from fedpeft.deploy import flower_env

    typer.echo(shlex.join(command), err=True)
    if not dry_run:
        os.execve(command[0], command, flower_env())


def _certificates(certificates: Path | None) -> tuple[str, str, str] | None:
    from fedpeft.deploy import CA_CERT, SERVER_CERT, SERVER_KEY

    if certificates is None:
        return None
    paths = [certificates / name for name in (CA_CERT, SERVER_CERT, SERVER_KEY)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        _fail(
            f"--certificates {certificates}: missing {', '.join(missing)} (make them with `fedpeft certs {certificates}`)"
        )
    return (str(paths[0]), str(paths[1]), str(paths[2]))


@app.command()
def superlink(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port of the SuperLink's APIs (Fleet, Control, ServerAppIo).")] = 8000,
    certificates: Annotated[
        Path | None, typer.Option(help="Directory with ca.crt, server.pem, server.key: TLS (without: insecure).")
    ] = None,
    database: Annotated[Path | None, typer.Option(help="SQLite state file (default: in memory).")] = None,
    supernode_auth: Annotated[
        bool, typer.Option(help="Accept only SuperNodes registered with `flwr supernode register`.")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the command and exit.")] = False,
) -> None:
    """Start a Flower SuperLink for `runtime: flower-deployment` (flower-superlink, apps run in this environment)."""
    from fedpeft.deploy import superlink_command

    if certificates is None and host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: no --certificates: the SuperLink on {host} accepts plain-text connections", err=True)
    with _reported():
        command = superlink_command(
            host, port, _certificates(certificates), str(database) if database else None, supernode_auth
        )
    _exec_flower(command, dry_run)


@app.command()
def supernode(
    partition_id: Annotated[int, typer.Option(help="The client this SuperNode holds (0 .. num-partitions - 1).")],
    num_partitions: Annotated[int, typer.Option(help="fl.clients of the runs it serves.")],
    superlink_address: Annotated[
        str, typer.Option("--superlink", help="The SuperLink's host:port.")
    ] = "127.0.0.1:8000",
    port: Annotated[int, typer.Option(help="Local ClientApp API port; one per SuperNode on a machine.")] = 9094,
    root_certificates: Annotated[
        Path | None, typer.Option(help="CA certificate that signed the SuperLink's (without: insecure).")
    ] = None,
    auth_key: Annotated[
        Path | None, typer.Option(help="This node's private key, for SuperNode authentication.")
    ] = None,
    max_wait_time: Annotated[
        float | None, typer.Option(help="Give up after this many seconds without a SuperLink (default: never).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="This node's own training data (node config data-file); never leaves it.")
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option(help="This node's own validation data (node config eval-file).")
    ] = None,
    schema: Annotated[str | None, typer.Option(help="The schema of --data / --eval-data (node config schema).")] = None,
    device: Annotated[
        str | None, typer.Option(help="Where this node trains, e.g. cpu, cuda, cuda:1 (node config device).")
    ] = None,
    micro_batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, help="Examples per forward pass on this node; the batch stays (node config micro-batch-size)."
        ),
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Trade compute for memory on this node (node config gradient-checkpointing).",
        ),
    ] = None,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Keep a long-lived node worker that loads the run's model once; --no-worker: Flower's "
            "ClientApp process per message does everything.",
        ),
    ] = True,
    dry_run: Annotated[bool, typer.Option(help="Print the command and exit.")] = False,
) -> None:
    """Start a Flower SuperNode holding one client (flower-supernode with its node config), with a node worker
    that keeps the run's model between rounds."""
    import shlex

    from fedpeft.deploy import WORKER_KEY, run_node, supernode_command, worker_command

    for path in (root_certificates, auth_key):
        if path is not None and not path.is_file():
            _fail(f"{path}: no such file")
    node_config = {k: str(v.expanduser().resolve()) for k, v in [("data-file", data), ("eval-file", eval_data)] if v}
    settings = [("schema", schema), ("device", device), ("micro-batch-size", micro_batch_size)]
    node_config |= {k: v for k, v in [*settings, ("gradient-checkpointing", gradient_checkpointing)] if v is not None}

    def flower_command(socket: str | None) -> list[str]:
        extra = node_config if socket is None else {**node_config, WORKER_KEY: socket}
        certificate, key = (str(p) if p else None for p in (root_certificates, auth_key))
        return supernode_command(
            superlink_address, partition_id, num_partitions, port, certificate, key, max_wait_time, extra
        )

    with _reported():
        command = flower_command(None)
    if not worker:
        _exec_flower(command, dry_run)
    elif dry_run:
        socket = "<private directory>/worker.sock"
        for line in (worker_command(socket), flower_command(socket)):
            typer.echo(shlex.join(line), err=True)
    else:
        with _reported():
            code = run_node(flower_command)
        raise typer.Exit(code)


@app.command()
def certs(
    directory: Annotated[Path, typer.Argument(help="Where to write ca.crt, server.pem, server.key.")],
    host: Annotated[
        list[str] | None, typer.Option(help="Host name or IP the SuperLink is reached at (repeatable).")
    ] = None,
    node_keys: Annotated[int, typer.Option(help="Also write this many SuperNode key pairs (node-N, node-N.pub).")] = 0,
) -> None:
    """Make a self-signed CA and SuperLink certificate (and SuperNode keys) for trials and tests."""
    from fedpeft.deploy import make_certificates, make_node_keys

    paths = make_certificates(directory, tuple(host or ["127.0.0.1", "localhost"]))
    for path in paths:
        typer.echo(str(path))
    for private, public in make_node_keys(directory, node_keys):
        typer.echo(f"{private} {public}")


from fedpeft.cli import chat as _chat  # noqa: E402,F401  (registers `chat`)
from fedpeft.cli import code_eval as _code_eval  # noqa: E402,F401  (registers `suites` and `evaluate`)
from fedpeft.cli import report as _report  # noqa: E402,F401  (registers `report`)
from fedpeft.cli import serve as _serve  # noqa: E402,F401  (registers `serve`)
from fedpeft.cli import use as _use  # noqa: E402,F401  (registers `generate` and `merge`)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)


if __name__ == "__main__":
    main()
