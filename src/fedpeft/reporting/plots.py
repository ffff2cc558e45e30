"""PNG plots of a run's metrics and of comparisons, drawn with matplotlib's Agg backend.

Each function draws one figure into ``path``: a file, or a binary stream (``fedpeft report`` embeds the PNG bytes
in its page).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any


def plot_losses(rounds: list[dict[str, Any]], path: Path | IO[bytes]) -> None:
    """Train loss (mean over the round's clients) and global eval loss per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 4))
    train = [(r["round"], r["train_loss"]) for r in rounds if r.get("train_loss") is not None]
    evals = [(r["round"], r["eval"]["loss"]) for r in rounds if r.get("eval")]
    if train:
        ax.plot(*zip(*train, strict=True), marker="o", label="train loss (sampled clients)")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="s", label="eval loss (global test split)")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(curves: dict[str, list[tuple[int, float]]], metric: str, path: Path | IO[bytes]) -> None:
    """One line per strategy: the test metric after each round (round 0: before training)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=label)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def seed_band(curves: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Rounds every seed evaluated, with the mean, min and max of the metric over seeds at each."""
    shared = sorted(set.intersection(*(set(dict(c)) for c in curves)))
    values = [[dict(c)[rnd] for c in curves] for rnd in shared]
    return shared, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_comparison_bands(
    curves: dict[str, list[list[tuple[int, float]]]], metric: str, path: Path | IO[bytes]
) -> None:
    """One line per entry: the mean over seeds of the test metric after each round, in a band from the lowest
    to the highest seed (min..max, not a confidence band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, seed_curves in curves.items():
        rounds, centre, low, high = seed_band(seed_curves)
        (line,) = ax.plot(rounds, centre, marker="o", markersize=3, label=f"{label} ({len(seed_curves)} seeds)")
        if len(seed_curves) > 1:
            ax.fill_between(rounds, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(f"test {metric}")
    ax.set_title("mean over seeds; band: min..max over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mixing_matrix(weights: list[list[float]], clients: list[int], rnd: int, path: Path | IO[bytes]) -> None:
    """A personalised round's mixing matrix W: row i is what client i's next model takes from each client."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"client-{c}" for c in clients]
    size = min(2.5 + 0.45 * len(clients), 16)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    top = max(max(row) for row in weights)
    image = ax.imshow(weights, cmap="magma", vmin=0.0, vmax=top)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    if len(clients) <= 12:
        for i, row in enumerate(weights):
            for j, w in enumerate(row):
                ax.text(
                    j, i, f"{w:.2f}", ha="center", va="center", fontsize=7, color="white" if w < 0.6 * top else "black"
                )
    ax.set_xlabel("model mixed in (j)")
    ax.set_ylabel("client receiving (i)")
    ax.set_title(f"mixing weights W, round {rnd}")
    fig.colorbar(image, ax=ax, label="W[i, j]")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_partition_heatmap(table: dict[str, dict[str, int]], path: Path | IO[bytes], max_categories: int = 40) -> None:
    """Rows per client (y) and category (x); categories beyond the ``max_categories`` largest are summed
    into one 'other' column so the picture stays readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = category_columns(table, max_categories)
    clients = list(table)
    grid = np.array([[category_cell(table[c], col, columns) for col in columns] for c in clients], dtype=float)
    fig, ax = plt.subplots(figsize=(min(3 + 0.3 * len(columns), 20), min(1.5 + 0.3 * len(clients), 16)))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(clients)), clients, fontsize=7)
    ax.set_xlabel("category")
    ax.set_ylabel("client")
    fig.colorbar(image, ax=ax, label="rows")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def category_columns(table: dict[str, dict[str, int]], max_categories: int) -> list[str]:
    """The largest categories overall (ties by name), plus 'other' if any were left out."""
    totals: dict[str, int] = {}
    for row in table.values():
        for cat, n in row.items():
            totals[cat] = totals.get(cat, 0) + n
    ranked = sorted(totals, key=lambda c: (-totals[c], c))
    return ranked[:max_categories] + (["other"] if len(ranked) > max_categories else [])


def category_cell(row: dict[str, int], column: str, columns: list[str]) -> int:
    if column == "other" and "other" not in row:
        return sum(n for cat, n in row.items() if cat not in columns)
    return row.get(column, 0)


def plot_per_client(
    global_points: list[tuple[int, float]],
    client_points: dict[str, list[tuple[int, float]]],
    ylabel: str,
    title: str,
    path: Path | IO[bytes],
) -> None:
    """A figure per round: the global value as a bold line and each client's as a thin one (at most 20 clients
    drawn, in name order, so the legend stays readable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.5, 4))
    shown = sorted(client_points, key=client_order)[:20]
    for name in shown:
        points = client_points[name]
        if points:
            ax.plot(*zip(*points, strict=True), linewidth=0.9, alpha=0.7, marker=".", label=name)
    if global_points:
        ax.plot(*zip(*global_points, strict=True), color="black", linewidth=2.2, marker="o", label="global")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    left_out = len(client_points) - len(shown)
    ax.set_title(title + (f" ({left_out} more clients not drawn)" if left_out > 0 else ""), fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2 if len(shown) > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def client_order(name: str) -> tuple[int, str]:
    """``client-10`` after ``client-9``."""
    head, _, number = name.rpartition("-")
    return (int(number), head) if number.isdigit() else (-1, name)


def plot_bytes_quality_curve(points: list[tuple[int, int, float]], metric: str, path: Path | IO[bytes]) -> None:
    """A run's trade-off: the evaluated metric against the cumulative megabytes exchanged (up + down) by the end
    of each round; ``points`` are (round, cumulative bytes, value), each marker labelled with its round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [b / 1e6 for _, b, _ in points]
    ys = [v for _, _, v in points]
    ax.plot(xs, ys, marker="o")
    for (rnd, _, _), x, y in zip(points, xs, ys, strict=True):
        ax.annotate(f"r{rnd}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("cumulative MB exchanged (up + down)")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bytes_quality_entries(
    entries: dict[str, tuple[float, float, float, float]], metric: str, path: Path | IO[bytes]
) -> None:
    """A comparison's trade-off, one point per entry: (megabytes exchanged, final metric mean, min, max); an
    entry run on several seeds gets a min..max bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, (megabytes, centre, low, high) in entries.items():
        ax.errorbar(
            [megabytes], [centre], yerr=[[centre - low], [high - centre]], fmt="o", capsize=4, label=label, markersize=6
        )
        ax.annotate(label, (megabytes, centre), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set_xlabel("MB exchanged over the run (up + down)")
    ax.set_ylabel(f"final test {metric}")
    ax.set_title("one point per entry; bar: min..max over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_round_times(
    round_seconds: list[tuple[int, float]], client_seconds: list[tuple[int, float]], path: Path | IO[bytes]
) -> None:
    """Wall seconds per round (bars) with each client's local training time in that round (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6, 3.6))
    if round_seconds:
        ax.bar(*zip(*round_seconds, strict=True), color="#9ecae1", label="round (wall)")
    if client_seconds:
        ax.scatter(*zip(*client_seconds, strict=True), color="#08519c", s=14, zorder=3, label="a client's training")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("seconds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_client_bars(values: dict[str, dict[str, float]], ylabel: str, path: Path | IO[bytes]) -> None:
    """Grouped bars per client: ``values[series][client]`` (e.g. the client-validation metric before and after
    training); a client missing from a series has no bar there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = sorted({c for series in values.values() for c in series}, key=client_order)
    width = 0.8 / max(len(values), 1)
    fig, ax = plt.subplots(figsize=(min(3 + 0.45 * len(clients) * max(len(values), 1), 16), 3.8))
    for k, (series, by_client) in enumerate(values.items()):
        xs = [i + k * width for i, c in enumerate(clients) if c in by_client]
        ax.bar(xs, [by_client[c] for c in clients if c in by_client], width=width, label=series)
    ax.set_xticks([i + width * (len(values) - 1) / 2 for i in range(len(clients))], clients, rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
