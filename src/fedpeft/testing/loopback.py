"""A Flower deployment on 127.0.0.1 for tests, benchmarks and trials: a SuperLink and SuperNodes started
as child processes with fedpeft's own ``superlink`` / ``supernode`` commands (a SuperNode with its node
worker, as ``fedpeft supernode`` runs by default, or without), each in its own session so that it and what
it starts (flower-superexec, the apps, the worker) can be stopped together, and checked to be gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from fedpeft.deploy import NODE_OPTIONS, flower_env, free_port, listening

WORKER_MARK = "fedpeft.flower_client worker"
"""What a node worker's command line holds."""


class LoopbackFederation:
    """A SuperLink and SuperNodes on 127.0.0.1 as child processes (for tests, benchmarks and trials), each
    in its own session so that it and what it starts (flower-superexec, the apps) can be stopped together;
    logs and each process's FLWR_HOME under ``workdir``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ports = [self.port]
        self._started: dict[int, float] = {}  # pid -> create time of every process seen under ours

    def start(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "a")  # noqa: SIM115 (the child holds it)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedpeft.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**flower_env(), "FLWR_HOME": str(self.workdir / f"flwr-{name}"), **(env or {})},  # apps installed here
            cwd=self.workdir,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def superlink(self, *extra: str) -> None:
        self.start("superlink", "superlink", "--port", str(self.port), *extra)
        deadline = time.monotonic() + 60
        while not listening(self.port):
            if time.monotonic() > deadline or self.procs[-1].poll() is not None:
                raise RuntimeError(f"the SuperLink did not start:\n{self.log('superlink')}")
            time.sleep(0.3)

    def supernode(
        self,
        partition: int,
        n: int,
        *extra: str,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        worker: bool = True,
        node_config: Mapping[str, str | int | bool] | None = None,
    ) -> subprocess.Popen:
        """A SuperNode holding client ``partition`` of ``n``, started as ``fedpeft supernode`` starts one: with
        its node worker unless ``worker`` is False; ``node_config`` sets the node-config keys that command
        has options for (``data-file``, ``device``, ...: :data:`~fedpeft.deploy.NODE_OPTIONS`); ``env`` adds
        to its environment (its worker's and its apps')."""
        port = free_port()
        self.ports.append(port)
        options = [*node_options(node_config or {}), *([] if worker else ["--no-worker"])]
        return self.start(
            name or f"supernode-{partition}",
            "supernode",
            "--superlink",
            self.address,
            "--partition-id",
            str(partition),
            "--num-partitions",
            str(n),
            "--port",
            str(port),
            *options,
            *extra,
            env=env,
        )

    def workers(self) -> dict[int, int]:
        """The node workers alive under this federation's processes: {pid of the fedpeft supernode: pid of
        its worker}."""
        import psutil

        found = {}
        for proc in self.procs:
            for child in self._descendants(proc):
                try:
                    if WORKER_MARK in " ".join(child.cmdline()):
                        found[proc.pid] = child.pid
                except psutil.Error:
                    continue
        return found

    def _descendants(self, proc: subprocess.Popen) -> list:
        """The live processes under ``proc`` (remembered, so that :meth:`survivors` can check them later)."""
        import psutil

        try:
            children = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        for child in children:
            try:
                self._started[child.pid] = child.create_time()
            except psutil.Error:
                continue
        return children

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text()

    def kill(self, proc: subprocess.Popen) -> None:
        """Stop one process of the federation and what it started (a SuperNode going down)."""
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def survivors(self) -> list[str]:
        """Flower processes of this federation still alive (matched by its ports)."""
        import psutil

        marks = [f":{p}" for p in self.ports]
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
            text = " ".join(proc.info["cmdline"] or [])
            ours = self._started.get(proc.info["pid"]) == proc.info["create_time"]
            if ours or (("flower" in text or "flwr" in text) and any(m in text for m in marks)):
                found.append(f"{proc.info['pid']}: {text[:160]}")
        return found

    def stop(self) -> None:
        """Stop every process of the federation (SIGTERM to each one's session, then SIGKILL), and anything
        they started that is still alive: Flower's processes and the node workers."""
        for proc in self.procs:
            self._descendants(proc)
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # flower-superexec starts in a session of its own and exits when its parent does
        while self.survivors() and time.monotonic() < deadline + 10:
            time.sleep(0.5)
        for line in self.survivors():  # last resort, so that nothing outlives the suite
            os.kill(int(line.split(":")[0]), signal.SIGKILL)


def node_options(node_config: Mapping[str, str | int | bool]) -> list[str]:
    """``fedpeft supernode``'s options that set ``node_config`` (a key it has no option for is refused)."""
    options = []
    for key, value in node_config.items():
        if key not in NODE_OPTIONS:
            raise ValueError(f"fedpeft supernode sets no node config {key!r}; it sets {', '.join(NODE_OPTIONS)}")
        option = NODE_OPTIONS[key]
        if isinstance(value, bool):
            options.append(option if value else option.replace("--", "--no-", 1))
        else:
            options += [option, str(value)]
    return options
