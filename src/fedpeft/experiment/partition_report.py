"""``fedpeft partition``: how a recipe's data is split, without training anything."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedpeft.config.schema import RunConfig
from fedpeft.experiment.setup import build_data
from fedpeft.models.base import load_tokenizer
from fedpeft.reporting.plots import category_cell, category_columns, plot_partition_heatmap


def partition_table(report: dict, max_categories: int = 12) -> Table:
    """Clients x (largest) categories, with train/val sizes."""
    categories = report["categories"]
    columns = category_columns(categories, max_categories)
    table = Table(title=f"{report['partition']} partition: {len(categories)} clients, {report['test_rows']} test rows")
    for name in ["client", "train", "val", *columns]:
        table.add_column(name, justify="left" if name == "client" else "right")
    for client, row in categories.items():
        sizes = report["clients"][client]
        cells = [str(category_cell(row, col, columns)) for col in columns]
        table.add_row(client, str(sizes["train"]), str(sizes["val"]), *cells)
    return table


def partition_report(config: RunConfig, png: Path, console: Console | None = None) -> dict:
    # Piped or captured output has no width to fit; a wide page keeps every column whole.
    console = console or Console(width=None if sys.stdout.isatty() else 240)
    data = build_data(config, load_tokenizer(config.model.name))
    console.print(partition_table(data.report))
    plot_partition_heatmap(data.report["categories"], png)
    console.print(f"heatmap: {png}")
    return data.report
