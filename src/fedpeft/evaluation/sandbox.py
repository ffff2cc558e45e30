"""Run untrusted Python (a model's code and its tests) in a separate, limited, isolated process.

Nothing generated is ever ``exec``-ed in fedpeft's own process. Each program is written to a fresh
temporary directory and run by ``python -I`` in a new session with stdin closed, an empty environment,
a wall-clock timeout that kills the whole process group, and resource limits (CPU seconds, address space,
file size, open files, no core dumps). On top of that, the best isolation available here is used:

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

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fedpeft.errors import FedpeftError

ISOLATIONS = ("bubblewrap", "seccomp", "none")
"""The isolation layers, strongest first."""

CLONE_THREAD = 0x00010000
"""clone()'s flag for a new thread (not a process)."""

ALLOW_UNISOLATED = "FEDPEFT_SANDBOX_ALLOW_UNISOLATED"
"""Set to 1 to let generated code run as root under resource limits alone when no isolation layer works."""

NOBODY = 65534
"""The unprivileged uid/gid samples run as."""

SAFE_PATH = "/usr/bin:/bin"
MAX_PROCESSES = 256
"""RLIMIT_NPROC of a sample running as uid 65534 (shared by all samples running at once)."""
DETAIL_LINES = 20
DETAIL_CHARS = 2000
PROGRAM_NAME = "sample.py"

# Refused with EPERM under the seccomp layer. Names this kernel/libseccomp does not know are skipped.
DENIED_SYSCALLS = (
    "socket",
    "socketpair",
    "connect",
    "bind",
    "listen",
    "accept",
    "accept4",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "setsid",
    "setpgid",
    "tkill",
    "tgkill",
    "pidfd_open",
    "pidfd_send_signal",
    "kexec_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
)


class SandboxError(FedpeftError):
    """A sandbox that cannot be set up as asked (an unknown or unavailable isolation layer)."""


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


# ---------------------------------------------------------------------------------------------- layers

_lock = threading.Lock()
_available: dict[str, bool] = {}
_chosen: list[str] = []
_seccomp_filter: list[object] = []
_why_not: dict[str, str] = {}
_bpf: list[bytes] = []


def _interpreter_binds() -> list[str]:
    """Read-only binds for the interpreter's own directories that the private ``/tmp`` would hide (a
    virtual environment in a clone under ``/tmp``, as CI makes)."""
    dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))}
    dirs.add(os.path.dirname(os.path.realpath(sys.executable)))
    binds: list[str] = []
    for path in sorted(dirs):
        if path.startswith("/tmp/"):
            binds += ["--ro-bind", path, path]
    return binds


def _bwrap_prefix(workdir: str) -> list[str]:
    bwrap = shutil.which("bwrap") or "bwrap"
    return [
        bwrap,
        "--unshare-all",
        "--cap-drop",
        "ALL",
        "--uid",
        str(NOBODY),
        "--gid",
        str(NOBODY),
        "--ro-bind",
        "/",
        "/",
        "--tmpfs",
        "/tmp",
        *_interpreter_binds(),
        "--bind",
        workdir,
        workdir,
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--chdir",
        workdir,
        "--setenv",
        "PATH",
        SAFE_PATH,
    ]


def _probe_bwrap() -> bool:
    """Whether bwrap can run this interpreter here; why not is kept for the warning (``_why_not``)."""
    if shutil.which("bwrap") is None:
        _why_not["bubblewrap"] = "bwrap is not installed (apt-get install bubblewrap)"
        return False
    with tempfile.TemporaryDirectory(prefix="fedpeft-sandbox-probe-") as tmp:
        os.chmod(tmp, 0o755)
        cmd = [*_bwrap_prefix(tmp), sys.executable, "-I", "-c", "pass"]
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env={})
        except (OSError, subprocess.SubprocessError) as exc:
            _why_not["bubblewrap"] = f"bwrap could not be run: {exc}"
            return False
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", errors="replace").strip()[-DETAIL_CHARS:]
        _why_not["bubblewrap"] = f"bwrap failed here (exit {done.returncode}): {said or 'no message'}"
    return done.returncode == 0


def why_unavailable(name: str) -> str:
    """Why the isolation layer ``name`` is not available here ("" when it is, or was not probed)."""
    return _why_not.get(name, "")


def _build_seccomp_filter() -> object | None:
    try:
        import pyseccomp
    except (ImportError, OSError):  # not installed, or libseccomp missing (pyseccomp loads it on import)
        return None
    try:
        flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        deny = pyseccomp.ERRNO(1)  # EPERM
        for name in DENIED_SYSCALLS:
            try:
                flt.add_rule(deny, name)
            except Exception:  # noqa: BLE001 - a syscall this platform lacks
                continue
        # kill(pid, sig) only for the caller's own process group (pid 0).
        flt.add_rule(deny, "kill", pyseccomp.Arg(0, pyseccomp.NE, 0))
        # No new processes (as root nothing else bounds a fork bomb): threads only. clone3 hides its flags
        # in memory a filter cannot read, so it answers ENOSYS and the C library falls back to clone.
        flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
        for name in ("fork", "vfork"):
            try:
                flt.add_rule(deny, name)
            except Exception:  # noqa: BLE001 - absent on this architecture (aarch64 has only clone)
                continue
        flt.add_rule(deny, "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, CLONE_THREAD, 0))
    except Exception:  # noqa: BLE001 - libseccomp missing or unusable
        return None
    return flt


def _readable_by_nobody(path: str) -> bool:
    """Whether every directory above ``path`` is searchable, and ``path`` readable, by 'other'."""
    p = Path(os.path.realpath(path))
    try:
        if not p.stat().st_mode & 0o004 and not (p.is_dir() and p.stat().st_mode & 0o001):
            return False
        return all(parent.stat().st_mode & 0o001 for parent in p.parents)
    except OSError:
        return False


def _can_drop_uid() -> bool:
    """We are root and uid 65534 can still run this interpreter and read its libraries."""
    if os.geteuid() != 0:
        return False
    paths = [sys.executable, os.path.realpath(sys.executable), sys.prefix, sys.base_prefix]
    paths += [p for p in sys.path if p and os.path.isdir(p)]
    return all(_readable_by_nobody(p) for p in paths)


def isolation_available(name: str) -> bool:
    """Whether the isolation layer ``name`` works here (probed once per process)."""
    if name not in ISOLATIONS:
        raise SandboxError(f"unknown sandbox isolation '{name}'; valid: {', '.join(ISOLATIONS)}")
    with _lock:
        if name not in _available:
            if name == "bubblewrap":
                _available[name] = _probe_bwrap()
            elif name == "seccomp":
                flt = _build_seccomp_filter()
                if flt is not None:
                    _seccomp_filter.append(flt)
                _available[name] = flt is not None
            else:
                _available[name] = True
        return _available[name]


def isolation() -> str:
    """The isolation in force here: ``bubblewrap``, ``seccomp`` or ``none`` (computed once, warned once)."""
    if _chosen:
        return _chosen[0]
    chosen = next(name for name in ISOLATIONS if isolation_available(name))
    if chosen == "none" and os.geteuid() == 0 and not _can_drop_uid() and not os.environ.get(ALLOW_UNISOLATED):
        raise SandboxError(
            "neither bubblewrap nor a seccomp filter is available, and generated code would run as root with "
            f"resource limits only (it could write anywhere and signal any process). Install bubblewrap "
            f"(apt-get install bubblewrap) or libseccomp2 for pyseccomp; or set {ALLOW_UNISOLATED}=1 to accept it. "
            f"bubblewrap: {_why_not.get('bubblewrap') or 'not available'}"
        )
    with _lock:
        if _chosen:
            return _chosen[0]
        _chosen.append(chosen)
    if chosen != "bubblewrap":
        uid_note = (
            "processes limited by running as uid 65534"
            if _can_drop_uid()
            else "no uid drop (not root, or the interpreter is not readable by uid 65534), so the process count "
            "is not limited"
        )
        layer = (
            "a seccomp filter (no sockets, ptrace, mounts, new processes or signals to other processes) and "
            "resource limits"
            if chosen == "seccomp"
            else "resource limits only (install pyseccomp for a seccomp filter)"
        )
        reason = _why_not.get("bubblewrap", "")
        warnings.warn(
            f"bubblewrap (bwrap) is not available{f' ({reason})' if reason else ''}: generated code runs under "
            f"{layer}, {uid_note}, "
            "without filesystem or network namespaces; install bubblewrap for full isolation",
            RuntimeWarning,
            stacklevel=2,
        )
    return chosen


_in_force = isolation  # run_program's ``isolation`` argument shadows the function's name


# ---------------------------------------------------------------------------------------------- running


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


def _bpf_fd(outdir: str) -> int | None:
    """A readable fd holding the seccomp filter as BPF, for ``bwrap --seccomp FD``: inside bubblewrap the
    sample gets the same filter (no new processes: a fork bomb in a pid namespace still fills the machine's
    process table before its teardown ends). None where pyseccomp cannot build it."""
    if not isolation_available("seccomp"):
        return None
    with _lock:
        if not _bpf:
            path = os.path.join(outdir, "filter.bpf")
            with open(path, "wb") as fh:
                _seccomp_filter[0].export_bpf(fh)  # type: ignore[attr-defined]
            with open(path, "rb") as fh:
                _bpf.append(fh.read())
    path = os.path.join(outdir, "filter.bpf")
    with open(path, "wb") as fh:
        fh.write(_bpf[0])
    return os.open(path, os.O_RDONLY)


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
