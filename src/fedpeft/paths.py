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
