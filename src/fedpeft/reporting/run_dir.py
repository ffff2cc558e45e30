"""The run directory: resolved config, metrics.jsonl, summary.json, partition report, adapter, plots."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpeft.errors import FedpeftError
from fedpeft.paths import atomic_write_text

if TYPE_CHECKING:
    from fedpeft.reporting.trackers import TrackerSet

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PARTITION_FILE = "partition.json"
ADAPTER_DIR = "adapter"
LOSS_PLOT = "loss.png"
PARTITION_PLOT = "partition.png"
MIXING_PLOT = "mixing.png"


class RunDirError(FedpeftError):
    """A run directory, or the output directory that holds them, that cannot be used as it is."""


def check_output_dir(parent: Path) -> None:
    """``output.dir`` can hold a new run directory: it is a directory, or can be made one (its nearest
    existing ancestor is a writable directory). Checked before anything is loaded."""
    existing = parent
    try:
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        usable = existing.is_dir()
    except OSError as err:  # a name the file system refuses (too long, a loop of links)
        raise RunDirError(f"output.dir={str(parent)!r}: {err.strerror or err}; set another output.dir") from None
    if not usable:
        where = "" if existing == parent else f" ({existing} is a file)"
        raise RunDirError(f"output.dir={str(parent)!r} cannot hold run directories{where}; set another output.dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"output.dir={str(parent)!r}: {existing} is not writable; set another output.dir")


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
        except OSError as err:
            raise RunDirError(f"output.dir={str(parent)!r}: cannot create {path}: {err.strerror or err}") from None


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class MetricsLog:
    """Append-only JSON Lines, flushed per record. Records carry ``round``; on resume, records of rounds
    after the last checkpoint (an interrupted round) are dropped so the log matches the state. ``trackers``
    (``output.loggers``) get each record once it is in the file."""

    def __init__(self, path: Path, trackers: TrackerSet | None = None):
        self.path = path
        self.trackers = trackers

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.trackers is not None:
            self.trackers.log_record(record)

    def read(self) -> list[dict[str, Any]]:
        """All records; a torn last line (the process was killed mid-write) is skipped, not fatal. Anything
        else that is not a JSON object with an integer ``round`` is a :class:`RunDirError`."""
        if not self.path.exists():
            return []
        try:
            text = self.path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            why = "a directory" if self.path.is_dir() else "not UTF-8 text" if isinstance(err, ValueError) else err
            raise RunDirError(f"{self.path} cannot be read as JSON Lines: {why}") from None
        lines = text.splitlines()
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        records = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i == last:
                    continue
                raise RunDirError(f"{self.path}: line {i + 1} is not JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get("round", 0), int):
                raise RunDirError(f"{self.path}: line {i + 1} is not a metrics record (a JSON object with a round)")
            records.append(record)
        return records

    def truncate_after(self, last_round: int) -> None:
        kept = [r for r in self.read() if r.get("round", 0) <= last_round]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
