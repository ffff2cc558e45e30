"""A SuperNode with a long-lived node worker: what ``fedpeft supernode`` runs by default.

Flower starts a fresh ClientApp process for every message, so a ClientApp that trains would re-import torch
and reload the model each round. Instead ``fedpeft supernode`` starts one node worker (which imports torch
and the rest once and keeps the run's model between messages) listening on a Unix socket in a private
directory (mode 0700), then ``flower-supernode`` with the socket in its node config (:data:`WORKER_KEY`);
fedpeft's thin ClientApp forwards each message to it. Both are children of this process, which supervises
them: a worker that exits is replaced by a fresh one; SIGINT / SIGTERM / the SuperNode's exit stop both;
on Linux each child also gets a parent-death signal, so neither outlives this process even if it is killed.

Standard library only; the commands to run are passed in (the CLI knows them).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fedpeft.deploy.processes import FlowerConnectionError, flower_env

SOCKET_NAME = "worker.sock"
"""The worker's socket, in the node's private directory."""

READY_TIMEOUT = 600.0
"""Seconds a fresh worker may take to import its libraries and listen."""


def worker_command(socket: str) -> list[str]:
    """The node worker's command line (the thin ClientApp's module runs it, :mod:`fedpeft.flower_client`)."""
    return [sys.executable, "-m", "fedpeft.flower_client", "worker", socket]


def parent_death_signal(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``signum`` to the child when this process dies (Linux's
    ``prctl(PR_SET_PDEATHSIG)``); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: nothing to load between fork and exec
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signum, 0, 0, 0)

    return preexec


def _say(text: str) -> None:
    print(f"fedpeft supernode: {text}", file=sys.stderr, flush=True)


class NodeProcesses:
    """The node worker and flower-supernode of one SuperNode, as children of this process."""

    def __init__(self, supernode_command: Callable[[str], list[str]], worker: Callable[[str], list[str]]):
        self.directory = Path(tempfile.mkdtemp(prefix="fedpeft-node-"))  # mode 0700: this user only
        self.socket = str(self.directory / SOCKET_NAME)
        self.worker_command = worker(self.socket)
        self.supernode_command = supernode_command(self.socket)
        self.worker: subprocess.Popen | None = None
        self.supernode: subprocess.Popen | None = None
        self.stop_signal: int | None = None

    def start_worker(self) -> None:
        """Start a worker and wait until it listens (its socket appears once it does)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        self.worker = subprocess.Popen(
            self.worker_command, env=flower_env(), preexec_fn=parent_death_signal(signal.SIGKILL)
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not os.path.exists(self.socket):
            code = self.worker.poll()
            if code is not None:
                raise FlowerConnectionError(f"the node worker exited with code {code} before it listened (see above)")
            if self.stop_signal is not None:
                return
            if time.monotonic() > deadline:
                raise FlowerConnectionError(f"the node worker did not listen within {READY_TIMEOUT:g} s")
            time.sleep(0.05)

    def start_supernode(self) -> None:
        _say(shlex.join(self.supernode_command))
        self.supernode = subprocess.Popen(
            self.supernode_command, env=flower_env(), preexec_fn=parent_death_signal(signal.SIGTERM)
        )

    def supervise(self) -> int:
        """Until flower-supernode exits or this process is asked to stop: replace a worker that exits (after
        a pause that grows while it keeps failing). Returns flower-supernode's exit code."""
        assert self.supernode is not None
        pause = 1.0
        while self.stop_signal is None:
            code = self.supernode.poll()
            if code is not None:
                return code
            if self.worker is not None and self.worker.poll() is not None:
                _say(f"the node worker exited (code {self.worker.returncode}); starting a fresh one in {pause:g} s")
                self._sleep(pause)
                started = time.monotonic()
                try:
                    self.start_worker()
                except FlowerConnectionError as err:
                    _say(str(err))
                pause = 1.0 if time.monotonic() - started > 60 else min(pause * 2, 60.0)
            self._sleep(0.2)
        self._signal_supernode(self.stop_signal)
        return self._wait(self.supernode, 20.0)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.stop_signal is None and time.monotonic() < deadline:
            time.sleep(0.05)

    def _signal_supernode(self, signum: int) -> None:
        if self.supernode is not None and self.supernode.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.supernode.send_signal(signum)

    @staticmethod
    def _wait(proc: subprocess.Popen, seconds: float) -> int:
        try:
            return proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> None:
        """Stop whatever still runs (flower-supernode first, so no message reaches a stopped worker) and
        remove the private directory."""
        if self.supernode is not None and self.supernode.poll() is None:
            self._signal_supernode(signal.SIGTERM)
            self._wait(self.supernode, 20.0)
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()
            self._wait(self.worker, 5.0)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def _stop_on_signals(node: NodeProcesses) -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        if node.stop_signal is None:
            node.stop_signal = signum

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_node(supernode_command: Callable[[str], list[str]], worker: Callable[[str], list[str]] = worker_command) -> int:
    """Run a SuperNode with a node worker until flower-supernode exits or SIGINT / SIGTERM arrives (passed
    on to flower-supernode); ``supernode_command(socket)`` and ``worker(socket)`` are the two command
    lines, given the worker's socket path. Returns flower-supernode's exit code."""
    node = NodeProcesses(supernode_command, worker)
    with _stop_on_signals(node):
        try:
            node.start_worker()
            if node.stop_signal is not None:
                return 128 + node.stop_signal
            _say(f"node worker {node.worker.pid if node.worker else '?'} listens at {node.socket}")
            node.start_supernode()
            return node.supervise()
        finally:
            node.close()
