"""Run untrusted Python (a model's code and its tests) in a separate, limited, isolated process.

Nothing generated is ever ``exec``-ed in fedpeft's own process. Each program is written to a fresh
temporary directory and run by ``python -I`` in a new session with stdin closed, an empty environment,
a wall-clock timeout that kills the whole process group, and resource limits (CPU seconds, address space,
file size, open files, no core dumps). On top of that, the best isolation available here is used
(:mod:`fedpeft.evaluation.sandbox_layers`):

- ``bubblewrap``: ``bwrap`` wraps the interpreter in new namespaces (no network, its own pids, a read-only
  view of ``/``, a private ``/tmp`` with only the program's directory writable), all capabilities dropped,
  running as uid 65534, with the seccomp filter below as well (``--seccomp``) where pyseccomp works.
- ``seccomp``: without bwrap, a ``pyseccomp`` filter in the child refuses sockets, ptrace, mounts,
  namespaces, new sessions, new processes (threads are allowed) and signals to other processes
  (``EPERM``); the process drops to uid 65534 when we are root and the interpreter is readable by that uid.
- ``none``: resource limits and the uid drop only.

A warning says once which isolation is in force whenever it is not bubblewrap.

A sample passes only if it exits with status 0 *and* prints a random per-run sentinel that the harness
appends after the program, so ``sys.exit(0)`` or ``os._exit(0)`` before the tests end is a failure. (The
sentinel guards against early exits, not against a program that reads its own source to forge it.)
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fedpeft.evaluation.sandbox_layers import (
    ALLOW_UNISOLATED,
    DETAIL_CHARS,
    DETAIL_LINES,
    ISOLATIONS,
    MAX_PROCESSES,
    NOBODY,
    PROGRAM_NAME,
    SAFE_PATH,
    SandboxError,
    _bpf_fd,
    _bwrap_prefix,
    _can_drop_uid,
    _seccomp_filter,
    isolation,
    isolation_available,
    why_unavailable,
)

__all__ = [
    "ALLOW_UNISOLATED",
    "ISOLATIONS",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "isolation",
    "isolation_available",
    "run_program",
    "run_programs",
    "why_unavailable",
]


@dataclass(frozen=True)
class SandboxLimits:
    """What one sample may use."""

    timeout_s: float = 10.0
    """Wall-clock seconds before the whole process group is killed."""
    cpu_s: int = 10
    """CPU seconds (RLIMIT_CPU)."""
    memory_mb: int = 1024
    """Address space per process (RLIMIT_AS)."""
    file_size_mb: int = 16
    """Largest file it may write, stdout and stderr included (RLIMIT_FSIZE)."""
    open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""


@dataclass(frozen=True)
class SandboxResult:
    """The verdict on one sample."""

    passed: bool
    status: str
    """``passed``, ``failed``, ``timeout`` or ``error`` (the sandbox itself could not run it)."""
    detail: str
    """The last lines of its stderr (capped), or why it failed without any."""
    seconds: float


_in_force = isolation  # run_program's ``isolation`` argument shadows the function's name


def _preexec(limits: SandboxLimits, layer: str, drop_uid: bool) -> Callable[[], None]:
    mb = 1024 * 1024
    rlimits = [
        (resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),  # SIGXCPU at the limit, SIGKILL a second later
        (resource.RLIMIT_AS, limits.memory_mb * mb, limits.memory_mb * mb),
        (resource.RLIMIT_FSIZE, limits.file_size_mb * mb, limits.file_size_mb * mb),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    flt = _seccomp_filter[0] if layer == "seccomp" else None

    def setup() -> None:  # runs in the child between fork and exec: no imports, no locks
        for which, soft, hard in rlimits:
            resource.setrlimit(which, (soft, hard))
        # Counted per uid and ignored for root: it binds once the sample runs as uid 65534 (bwrap, or the drop).
        resource.setrlimit(resource.RLIMIT_NPROC, (MAX_PROCESSES, MAX_PROCESSES))
        if drop_uid:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        if flt is not None:
            flt.load()  # type: ignore[attr-defined]

    return setup


def _tail(data: bytes) -> str:
    lines = data.decode("utf-8", errors="replace").rstrip().splitlines()[-DETAIL_LINES:]
    return "\n".join(lines)[-DETAIL_CHARS:]


def _kill_group(pgid: int) -> None:
    for _ in range(50):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def _children(pid: int) -> list[int]:
    """The direct children of ``pid`` (bwrap's: the init of the sample's pid namespace)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(c) for c in fh.read().split()]
    except (OSError, ValueError):
        return []


def _wait_gone(pids: list[int], deadline_s: float = 10.0) -> None:
    """Wait until each of ``pids`` has exited. A pid namespace's init exits only after the kernel has killed
    every process in it, so this is the end of the sandbox, without reading any dying process's memory."""
    deadline = time.monotonic() + deadline_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                    if fh.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                        break
            except OSError:
                break
            time.sleep(0.01)


def _reap(workdir: str, deadline_s: float = 5.0) -> None:
    """Kill every process still running the sample in ``workdir`` and wait until none is left: processes
    that left the group (bwrap's own session, a namespace being torn down) are found by their command line."""
    marker = os.path.join(workdir, PROGRAM_NAME).encode()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or time.monotonic() > deadline:
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if marker not in fh.read():
                        continue
                os.kill(int(entry), signal.SIGKILL)
                found = True
            except (OSError, ValueError):  # gone already, or not ours to see
                continue
        if not found:
            return
        time.sleep(0.02)


def run_program(program: str, limits: SandboxLimits = SandboxLimits(), isolation: str | None = None) -> SandboxResult:
    """Run one sample (its code followed by its tests) in the sandbox and judge it.

    ``isolation`` forces a layer (``bubblewrap``, ``seccomp``, ``none``); by default the best available.
    """
    layer = isolation if isolation is not None else _in_force()
    if not isolation_available(layer):
        raise SandboxError(f"sandbox isolation '{layer}' is not available here")
    sentinel = uuid.uuid4().hex
    source = f"{program}\n\n\nprint({sentinel!r}, flush=True)\n"
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="fedpeft-sandbox-")
    outdir = tempfile.mkdtemp(prefix="fedpeft-sandbox-out-")
    try:
        os.chmod(workdir, 0o755)
        path = os.path.join(workdir, PROGRAM_NAME)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(source)
        os.chmod(path, 0o644)
        drop_uid = layer != "bubblewrap" and _can_drop_uid()
        if drop_uid:
            os.chown(workdir, NOBODY, NOBODY)
        cmd = [sys.executable, "-I", path]
        keep: tuple[int, ...] = ()
        if layer == "bubblewrap":
            filter_fd = _bpf_fd(outdir)
            keep = (filter_fd,) if filter_fd is not None else ()
            cmd = [*_bwrap_prefix(workdir), *(["--seccomp", str(filter_fd)] if keep else []), *cmd]
        with open(os.path.join(outdir, "out"), "w+b") as out, open(os.path.join(outdir, "err"), "w+b") as err:
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    cwd=workdir,
                    env={"PATH": SAFE_PATH},
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=keep,
                    preexec_fn=_preexec(limits, layer, drop_uid),
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return SandboxResult(False, "error", f"could not start the sample: {exc}", time.monotonic() - start)
            finally:
                for fd in keep:
                    os.close(fd)
            timed_out = False
            try:
                returncode = proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            namespace_init = _children(proc.pid) if layer == "bubblewrap" else []
            _kill_group(proc.pid)
            if timed_out:
                returncode = proc.wait()
            if layer == "bubblewrap":
                _wait_gone(namespace_init)
            else:
                _reap(workdir)
            seconds = time.monotonic() - start
            out.seek(0)
            stdout = out.read()
            err.seek(0)
            stderr = _tail(err.read())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(outdir, ignore_errors=True)
    if timed_out:
        return SandboxResult(False, "timeout", f"timed out after {limits.timeout_s:g} s\n{stderr}".rstrip(), seconds)
    if returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
        return SandboxResult(False, "timeout", f"CPU limit of {limits.cpu_s} s reached\n{stderr}".rstrip(), seconds)
    if layer == "bubblewrap" and returncode != 0 and stderr.startswith("bwrap:"):
        return SandboxResult(False, "error", stderr, seconds)
    if returncode == 0 and sentinel.encode() in stdout:
        return SandboxResult(True, "passed", stderr, seconds)
    if returncode == 0:
        return SandboxResult(False, "failed", f"exited before its tests finished\n{stderr}".rstrip(), seconds)
    return SandboxResult(False, "failed", stderr or f"exit status {returncode}", seconds)


def run_programs(
    programs: Iterable[str],
    limits: SandboxLimits = SandboxLimits(),
    workers: int | None = None,
    isolation: str | None = None,
) -> list[SandboxResult]:
    """Run many samples in parallel (``workers`` subprocesses at a time, default the CPU count), in order."""
    items = list(programs)
    if not items:
        return []
    layer = isolation if isolation is not None else _in_force()
    if not isolation_available(layer):
        raise SandboxError(f"sandbox isolation '{layer}' is not available here")
    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: run_program(p, limits, layer), items))
