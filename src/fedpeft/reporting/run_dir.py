"""The run directory: resolved config, metrics.jsonl, summary.json, partition report, adapter, plots."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fedpeft.paths import atomic_write_text

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PARTITION_FILE = "partition.json"
ADAPTER_DIR = "adapter"
LOSS_PLOT = "loss.png"
PARTITION_PLOT = "partition.png"
MIXING_PLOT = "mixing.png"


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
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class MetricsLog:
    """Append-only JSON Lines, flushed per record. Records carry ``round``; on resume, records of rounds
    after the last checkpoint (an interrupted round) are dropped so the log matches the state."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """All records; a torn last line (the process was killed mid-write) is skipped, not fatal."""
        if not self.path.exists():
            return []
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1:
                    raise ValueError(f"{self.path}: line {i + 1} is not JSON") from None
        return records

    def truncate_after(self, last_round: int) -> None:
        kept = [r for r in self.read() if r.get("round", 0) <= last_round]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
