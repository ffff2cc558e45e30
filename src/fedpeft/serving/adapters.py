"""What a run trained, loaded once for use: one base model carrying every adapter the run wrote.

A global run wrote ``adapter/`` (served as ``global``); a personalised run wrote ``adapter/client-N/`` per
client (``client-N``). All of them are loaded onto one base model with peft's multi-adapter support, and
``base`` is the base with every adapter switched off, for comparison. :meth:`ServedRun.use` switches to one
under a lock, so concurrent users (the HTTP server's batches, the chat UI's two panes) never see another's
adapter half-way.

Notable choices:
- The adapters are the run's own PEFT adapter directories (what ``PeftModel.from_pretrained`` loads), not
  its checkpoints: what is served is exactly what a user downloading ``adapter/`` gets.
- ``peft.method: full`` wrote a whole model: it is served as ``global`` alone. Bottleneck adapters have no
  peft loader and are refused with what to do instead.
- Prompts are formatted with the run's template (``data.template``) for the instruction task; the code
  tasks' prompts are sent as they are.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedpeft.config.recipes import load_run_config
from fedpeft.config.schema import RunConfig
from fedpeft.errors import FedpeftError
from fedpeft.models.base import load_base_model
from fedpeft.reporting import run_dir as rd

BASE = "base"
"""The name of the base model with every adapter switched off."""
GLOBAL = "global"
BOTTLENECK_METHODS = ("adapter_h", "adapter_p", "parallel")
"""fedpeft's own bottleneck adapters (models/bottleneck.py), which peft cannot load."""


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Hosts that only this machine reaches."""


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a server bound to ``host`` (the HTTP server's and the chat UI's)."""
    return host in LOOPBACK_HOSTS or host.startswith("127.")


class ServingError(FedpeftError, ValueError):
    """A run, adapter or request that cannot be served, with what would be valid."""


@dataclass
class ServedRun:
    """A run's base model with its adapters, and how to prompt it."""

    run_dir: Path
    config: RunConfig
    model: torch.nn.Module
    tokenizer: Any
    names: list[str]
    """``base`` (where the run trained adapters), then ``global`` or ``client-0``, ``client-1``, ..."""
    peft: bool
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def default(self) -> str:
        """The adapter a request without a model name gets: the global one, else the first client's."""
        return GLOBAL if GLOBAL in self.names else next(n for n in self.names if n != BASE)

    def check_name(self, name: str) -> str:
        if name not in self.names:
            raise ServingError(f"unknown model {name!r}; this run serves: {', '.join(self.names)}")
        return name

    @contextmanager
    def use(self, name: str) -> Iterator[torch.nn.Module]:
        """The model with adapter ``name`` active (``base``: none), held under the lock until the block ends."""
        self.check_name(name)
        with self.lock:
            if not self.peft:
                yield self.model
            elif name == BASE:
                with self.model.disable_adapter():
                    yield self.model
            else:
                self.model.set_adapter(name)
                yield self.model

    def format_prompt(self, text: str, template: bool = True) -> str:
        """``text`` in the run's prompt template (instruction runs), or as it is."""
        if not template or self.config.data.task != "instruction":
            return text
        from fedpeft.data.tasks.common import format_prompt

        return format_prompt(text, self.config.data.template)


def adapter_dirs(run_dir: Path) -> dict[str, Path]:
    """Each adapter directory a finished run wrote, by the name it is served under."""
    if not run_dir.is_dir():
        raise ServingError(f"no such run directory: {run_dir}")
    if not (run_dir / rd.CONFIG_FILE).is_file():
        raise ServingError(f"{run_dir} is not a fedpeft run directory (no {rd.CONFIG_FILE})")
    root = run_dir / rd.ADAPTER_DIR
    if not root.is_dir():
        raise ServingError(f"{run_dir} has no {rd.ADAPTER_DIR}/: {_how_it_ended(run_dir)}")
    clients = sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("client-") and p.name[7:].isdigit()),
        key=lambda p: int(p.name[7:]),
    )
    if clients:
        return {p.name: p for p in clients}
    return {GLOBAL: root}


def _how_it_ended(run_dir: Path) -> str:
    summary_path = run_dir / rd.SUMMARY_FILE
    if not summary_path.is_file():
        return "the run never finished a round's bookkeeping (no summary.json); resume it with fedpeft run --resume"
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    done, planned = summary.get("rounds_completed"), summary.get("rounds_planned")
    why = f" ({summary['error']})" if summary.get("error") else ""
    return (
        f"the run is {summary.get('status', 'unfinished')}{why} after {done} of {planned} rounds; adapters are "
        f"written when it completes (fedpeft run --resume {run_dir})"
    )


def client_name(run: ServedRun, client: int | None) -> str:
    """The served name of ``--client N`` (None: the run's default adapter), or an error naming the choices."""
    if client is None:
        return run.default
    name = f"client-{client}"
    if name not in run.names:
        clients = [n for n in run.names if n.startswith("client-")]
        if not clients:
            raise ServingError(f"--client {client}: {run.run_dir} trained one global adapter (not a personalised run)")
        raise ServingError(f"--client {client}: {run.run_dir} has {', '.join(clients)}")
    return name


def load_run(run_dir: Path, device: str | None = None) -> ServedRun:
    """The base model of ``run_dir`` with every adapter it wrote, on ``device`` (default: the run's)."""
    run_dir = Path(run_dir).expanduser()
    dirs = adapter_dirs(run_dir)
    config = load_run_config(run_dir / rd.CONFIG_FILE)
    device = device or config.model.device
    method = config.peft.method
    if method in BOTTLENECK_METHODS or not _is_loadable(dirs):
        raise ServingError(
            f"{run_dir} trained peft.method={method}, whose adapters peft cannot load; serve a LoRA-family run, "
            "or merge the adapters into the model yourself"
        )
    if method == "full":
        (where,) = dirs.values()
        loaded = load_base_model(str(where), config.model.dtype, device=device)
        return ServedRun(run_dir, config, loaded.model.eval(), loaded.tokenizer, [GLOBAL], peft=False)
    from peft import PeftModel

    base = load_base_model(config.model.name, config.model.dtype, device=device, quantization=config.model.quantization)
    names = list(dirs)
    model = PeftModel.from_pretrained(base.model, str(dirs[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(dirs[name]), adapter_name=name)
    model.eval()
    return ServedRun(run_dir, config, model, base.tokenizer, [BASE, *names], peft=True)


def _is_loadable(dirs: dict[str, Path]) -> bool:
    """peft adapter directories, or (``full``) a whole transformers model."""
    return all((d / "adapter_config.json").is_file() or (d / "config.json").is_file() for d in dirs.values())
