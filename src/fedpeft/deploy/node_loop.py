"""``flower-supernode`` with short idle waits: what ``fedpeft supernode`` runs.

Flower 1.41 and 1.42's SuperNode loop (``flwr/supernode/start_client_internal.py``) sleeps a fixed 3 s
whenever its poll of the SuperLink finds no message, and waits for its ClientApp's reply in 0.5 s steps. A
deployed round pays both on every message: a train message that arrives just after a poll waits up to 3 s
before the node even sees it (``benchmarks/flower_overhead.py``). There is no option for it, so this module
runs Flower's own ``flower-supernode`` entry point with that module's ``time.sleep`` capped at
``FEDPEFT_NODE_POLL_SECONDS`` (default 0.2 s: five polls a second per node). Only that module's sleeps
change, nothing else of Flower's; and only on the Flower versions this was checked against
(:data:`CHECKED`), since it reaches into Flower's internals. On any other version the loop runs unchanged
and a line on stderr says so.

    python -m fedpeft.deploy.node_loop --superlink ... (flower-supernode's own arguments)
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

CHECKED = ("1.41.", "1.42.")
"""Flower versions whose SuperNode loop sleeps through ``start_client_internal.time.sleep``."""
POLL_ENV, DEFAULT_POLL = "FEDPEFT_NODE_POLL_SECONDS", 0.2


class CappedSleep:
    """Stands in for the ``time`` module inside Flower's SuperNode loop: every attribute is ``time``'s, but
    ``sleep`` waits at most ``cap`` seconds."""

    def __init__(self, cap: float):
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def poll_seconds() -> float:
    """The cap, from ``FEDPEFT_NODE_POLL_SECONDS`` (a positive number of seconds), else the default."""
    raw = os.environ.get(POLL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_POLL
    except ValueError:
        value = -1.0
    if not value > 0:
        raise SystemExit(f"{POLL_ENV}={raw!r} is not a positive number of seconds")
    return value


def shorten_idle_waits(cap: float) -> bool:
    """Cap the SuperNode loop's sleeps at ``cap`` seconds; False (and nothing changed) on a Flower version
    this was not checked against."""
    import flwr
    import flwr.supernode.start_client_internal as loop

    version = str(getattr(flwr, "__version__", ""))
    if not version.startswith(CHECKED) or getattr(loop, "time", None) is not time:
        print(
            f"fedpeft: flower-supernode runs with Flower's own idle waits (flwr {version or '?'} is not one of "
            f"{', '.join(v + 'x' for v in CHECKED)})",
            file=sys.stderr,
        )
        return False
    loop.time = CappedSleep(cap)
    return True


def main() -> None:
    """Run ``flower-supernode`` with ``sys.argv``'s arguments and short idle waits."""
    from flwr.supernode.cli import flower_supernode

    shorten_idle_waits(poll_seconds())
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
