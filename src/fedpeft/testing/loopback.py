"""A Flower deployment on 127.0.0.1 for tests, benchmarks and trials: a SuperLink and SuperNodes started
as child processes with fedpeft's own ``superlink`` / ``supernode`` commands, each in its own session so
that it and what it starts (flower-superexec, the apps) can be stopped together, and checked to be gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from fedpeft.deploy import flower_env, free_port, listening


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
        self, partition: int, n: int, *extra: str, name: str | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """A SuperNode holding client ``partition`` of ``n``; ``env`` adds to its environment (and its apps')."""
        port = free_port()
        self.ports.append(port)
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
            *extra,
            env=env,
        )

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
        for proc in psutil.process_iter(["pid", "cmdline"]):
            text = " ".join(proc.info["cmdline"] or [])
            if ("flower" in text or "flwr" in text) and any(m in text for m in marks):
                found.append(f"{proc.info['pid']}: {text[:160]}")
        return found

    def stop(self) -> None:
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
