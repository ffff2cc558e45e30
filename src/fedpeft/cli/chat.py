"""``fedpeft chat``: the Gradio chat UI over every adapter of a run, served on this machine.

Notable choices:
- The UI binds 127.0.0.1 unless ``--host`` names another address, and a non-loopback ``--host`` prints a
  warning that anyone on the network can then use the model. ``GRADIO_SERVER_NAME`` in the environment never
  widens it: a non-loopback value there without ``--host`` is refused, since fedpeft passes the host to gradio
  itself and a silently ignored variable would surprise whoever set it.
- There is no share-link option at all (see :mod:`fedpeft.serving.chat`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fedpeft.cli import _reported, app
from fedpeft.errors import FedpeftError

DEFAULT_HOST = "127.0.0.1"


def chat_host(host: str | None) -> str:
    """The address to bind: ``--host`` if given, else loopback; refuses a wider ``GRADIO_SERVER_NAME``."""
    from fedpeft.serving.adapters import is_loopback

    if host is not None:
        return host
    env = os.environ.get("GRADIO_SERVER_NAME")
    if env and not is_loopback(env):
        raise FedpeftError(
            f"GRADIO_SERVER_NAME={env} would make the chat UI reachable from the network; fedpeft chat binds "
            f"{DEFAULT_HOST} unless you pass --host {env} explicitly"
        )
    return DEFAULT_HOST


@app.command()
def chat(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (its adapter/ is served).")],
    host: Annotated[
        str | None,
        typer.Option(help=f"Address to bind (default {DEFAULT_HOST}; another exposes the UI to the network)."),
    ] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve the UI on.")] = 7860,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:N or auto (default: the run's).")] = None,
) -> None:
    """A chat UI (Gradio) over the run's global or per-client adapters and the base model, side by side too."""
    from fedpeft.serving.adapters import is_loopback, load_run
    from fedpeft.serving.chat import launch_ui

    with _reported():
        bind = chat_host(host)
        if not is_loopback(bind):
            typer.echo(
                f"warning: --host {bind}: the chat UI is reachable from the network, with no authentication; "
                "anyone who can reach this port can use the model",
                err=True,
            )
        run = load_run(run_dir, device)
        shown = f"[{bind}]" if ":" in bind else bind
        typer.echo(f"fedpeft chat: {', '.join(run.names)} on http://{shown}:{port}/ (Ctrl-C stops it)")
        launch_ui(run, bind, port, block=True, quiet=True)
