"""The run directory: resolved config, metrics.jsonl, summary.json, partition report, adapter, plots."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PARTITION_FILE = "partition.json"
ADAPTER_DIR = "adapter"
LOSS_PLOT = "loss.png"
PARTITION_PLOT = "partition.png"


def new_run_dir(parent: Path, recipe: str) -> Path:
    """``parent/<recipe>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that already exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = parent / f"{Path(recipe).stem}-{stamp}"
    path, n = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


class MetricsLog:
    """Append-only JSON Lines, flushed per record. Records carry ``round``; on resume, records of rounds
    after the last checkpoint (an interrupted round) are dropped so the log matches the state."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, last_round: int) -> None:
        kept = [r for r in self.read() if r.get("round", 0) <= last_round]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
