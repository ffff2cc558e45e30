"""``fedpeft report``: one self-contained HTML page (figures embedded) for a run or a comparison directory.

The page is built by :func:`fedpeft.reporting.report.write_report`; this command only names the output and prints
its path. A path that is neither a run directory nor a comparison directory is an error (exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedpeft.cli import _reported, app


@app.command()
def report(
    directory: Annotated[
        Path, typer.Argument(help="A run directory (fedpeft run) or a comparison directory (fedpeft compare).")
    ],
    out: Annotated[Path | None, typer.Option(help="Where to write the page (default: DIRECTORY/report.html).")] = None,
) -> None:
    """Write one self-contained HTML page (figures embedded) for DIRECTORY, a run directory (fedpeft run) or a
    comparison directory (fedpeft compare), and print its path."""
    from fedpeft.reporting.report import write_report

    with _reported():
        typer.echo(str(write_report(directory, out)))
