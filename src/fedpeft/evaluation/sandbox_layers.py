"""The sandbox's isolation layers: which one works here, and what each adds around a sample.

- ``bubblewrap``: ``bwrap`` wraps the interpreter in new namespaces (no network, its own pids, a read-only
  view of ``/``, a private ``/tmp`` with only the program's directory writable), all capabilities dropped,
  running as uid 65534, with the seccomp filter below as well (``--seccomp``) where pyseccomp works.
- ``seccomp``: without bwrap, a ``pyseccomp`` filter in the child refuses sockets, ptrace, mounts,
  namespaces, new sessions, new processes (threads are allowed) and signals to other processes
  (``EPERM``); the process drops to uid 65534 when we are root and the interpreter is readable by that uid.
- ``none``: resource limits and the uid drop only; refused as root without the drop unless accepted
  (``FEDPEFT_SANDBOX_ALLOW_UNISOLATED=1``).

Each layer is probed once per process; a warning says once which is in force whenever it is not bubblewrap,
and why bubblewrap is not.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
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
