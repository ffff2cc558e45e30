"""PNG plots of a run's metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_losses(rounds: list[dict[str, Any]], path: Path) -> None:
    """Train loss (mean over the round's clients) and global eval loss per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    train = [(r["round"], r["train_loss"]) for r in rounds if r.get("train_loss") is not None]
    evals = [(r["round"], r["eval"]["loss"]) for r in rounds if r.get("eval")]
    if train:
        ax.plot(*zip(*train, strict=True), marker="o", label="train loss (sampled clients)")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="s", label="eval loss (global test split)")
    ax.set_xlabel("round")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
