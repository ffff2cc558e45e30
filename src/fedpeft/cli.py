"""The ``fedpeft`` command: a thin shell over :mod:`fedpeft.experiment`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fedpeft.config.recipes import ConfigError, list_recipes, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Federated parameter-efficient fine-tuning.")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def recipes() -> None:
    """List the shipped recipes."""
    for name, description in list_recipes().items():
        typer.echo(f"{name:<16} {description}")


@app.command("config")
def show_config(
    recipe: Annotated[str, typer.Argument(help="Recipe name or path to a YAML file.")] = "default",
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key (repeatable).")] = None,
) -> None:
    """Print the fully resolved configuration of a recipe plus overrides, as YAML."""
    from fedpeft.config.recipes import dump_config

    try:
        typer.echo(dump_config(load_config(recipe, list(set_ or []))), nl=False)
    except ConfigError as err:
        _fail(str(err))


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
) -> None:
    """Run a federated fine-tuning job."""
    from fedpeft.data.partition import PartitionError
    from fedpeft.experiment.run import RunInterrupted, run_experiment
    from fedpeft.models.base import ModelLoadError

    overrides = list(set_ or [])
    try:
        if resume is not None:
            if not resume.is_dir():
                _fail(f"--resume {resume}: no such run directory")
            run_dir, summary = run_experiment(resume_dir=resume, overrides=overrides, quiet=quiet)
        else:
            run_dir, summary = run_experiment(load_config(recipe, overrides), quiet=quiet)
    except (ConfigError, PartitionError, ModelLoadError) as err:
        _fail(str(err))
    except RunInterrupted as err:
        _fail(str(err), code=130)
    final = summary["final_eval"] or {}
    typer.echo(
        f"done: {summary['rounds_completed']} rounds, eval loss {final.get('loss', float('nan')):.4f}, "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB -> {run_dir}"
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
