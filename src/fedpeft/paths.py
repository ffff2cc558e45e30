"""Where fedpeft keeps what it builds once and reuses (harvested corpus, built-in models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FEDPEFT_CACHE`` if set, else ``$XDG_CACHE_HOME/fedpeft`` or ``~/.cache/fedpeft``."""
    if env := os.environ.get("FEDPEFT_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fedpeft"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
