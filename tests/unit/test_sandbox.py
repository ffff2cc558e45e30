"""The code-execution sandbox: verdicts, limits, isolation and cleanup, under each layer available here."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import psutil
import pytest

from fedpeft.evaluation import sandbox as sandbox_module
from fedpeft.evaluation.sandbox import (
    SandboxError,
    SandboxLimits,
    SandboxResult,
    isolation,
    isolation_available,
    run_program,
    run_programs,
)

FAST = SandboxLimits(timeout_s=5.0, cpu_s=5, memory_mb=512)


def _layer_param(name: str) -> object:
    reason = {
        "bubblewrap": "bwrap is not installed or cannot create namespaces here (apt-get install bubblewrap)",
        "seccomp": "pyseccomp (with libseccomp) is not importable here",
        "none": "",
    }[name]
    return pytest.param(name, marks=pytest.mark.skipif(not isolation_available(name), reason=reason), id=name)


ISOLATED = [_layer_param("bubblewrap"), _layer_param("seccomp")]
ALL = [*ISOLATED, _layer_param("none")]


MARK = "fedpeft-sandbox-"  # in the command line of every sample (its program lives in such a directory)


def _survivors(before: set[int]) -> list[psutil.Process]:
    """Processes a sample left: new since ``before`` and running a sandbox program or a marked child.
    Only command lines are matched, so other tests' processes (servers, workers) never count."""
    alive = []
    for proc in psutil.process_iter(["cmdline"]):
        programs = [part for part in proc.info["cmdline"] or () if MARK in part]
        # A sample of another run still going has its directory; ours is removed when the run ends.
        if proc.pid in before or not programs or any(os.path.exists(p) for p in programs if p.endswith(".py")):
            continue
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _running() -> set[int]:
    return {p.pid for p in psutil.process_iter()}


def _assert_nothing_survives(before: set[int]) -> None:
    deadline = time.monotonic() + 2.0
    while (left := _survivors(before)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, [p.info.get("cmdline") for p in left]


def test_isolation_is_one_of_the_layers():
    assert isolation() in ("bubblewrap", "seccomp", "none")
    with pytest.raises(SandboxError, match="unknown sandbox isolation 'chroot'; valid: bubblewrap, seccomp, none"):
        isolation_available("chroot")


@pytest.mark.parametrize("layer", ALL)
def test_correct_program_passes(layer):
    result = run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n", FAST, isolation=layer)
    assert result == SandboxResult(True, "passed", result.detail, result.seconds)
    assert result.seconds < 5


@pytest.mark.parametrize("layer", ALL)
def test_failing_assert_fails_with_its_traceback(layer):
    result = run_program("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n", FAST, isolation=layer)
    assert (result.passed, result.status) == (False, "failed")
    assert "AssertionError" in result.detail


@pytest.mark.parametrize("layer", ALL)
@pytest.mark.parametrize("exit_call", ["import sys; sys.exit(0)", "import os; os._exit(0)"])
def test_exit_zero_before_the_end_fails(layer, exit_call):
    result = run_program(f"{exit_call}\nassert False\n", FAST, isolation=layer)
    assert (result.passed, result.status) == (False, "failed")
    assert "exited before its tests finished" in result.detail


@pytest.mark.parametrize("layer", ALL)
def test_infinite_loop_times_out_and_leaves_nothing(layer):
    limits = SandboxLimits(timeout_s=1.0, cpu_s=30)
    program = (
        "import subprocess, sys\n"
        "try:\n"
        f"    subprocess.Popen([sys.executable, '-c', 'while True: pass  # {MARK}child'])\n"
        "except OSError:\n"
        "    pass  # the seccomp layer refuses new processes\n"
        "while True:\n    pass\n"
    )
    before = _running()
    start = time.monotonic()
    result = run_program(program, limits, isolation=layer)
    assert (result.passed, result.status) == (False, "timeout")
    assert time.monotonic() - start < 4
    _assert_nothing_survives(before)


@pytest.mark.parametrize("layer", ALL)
def test_cpu_limit_counts_as_timeout(layer):
    result = run_program("while True:\n    pass\n", SandboxLimits(timeout_s=10.0, cpu_s=1), isolation=layer)
    assert (result.passed, result.status) == (False, "timeout")
    assert "CPU limit" in result.detail


@pytest.mark.parametrize("layer", ALL)
def test_memory_bomb_fails(layer):
    result = run_program("x = bytearray(512 * 1024 * 1024)\n", SandboxLimits(memory_mb=256), isolation=layer)
    assert (result.passed, result.status) == (False, "failed")
    assert "MemoryError" in result.detail


@pytest.mark.parametrize("layer", ALL)
def test_big_file_fails(layer):
    program = "with open('big.bin', 'wb') as fh:\n    for _ in range(8):\n        fh.write(b'x' * 1024 * 1024)\n"
    result = run_program(program, SandboxLimits(file_size_mb=2), isolation=layer)
    assert (result.passed, result.status) == (False, "failed")


@pytest.mark.parametrize("layer", ALL)
def test_huge_output_fails(layer):
    program = "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 1024 * 1024)\n"
    result = run_program(program, SandboxLimits(file_size_mb=4), isolation=layer)
    assert (result.passed, result.status) == (False, "failed")


@pytest.mark.parametrize("layer", ALL)
def test_fork_bomb_is_contained(layer):
    # 2**8 processes that would each live for minutes: all must be gone when the timeout fires.
    program = "import os, time\nfor _ in range(8):\n    try:\n        os.fork()\n    except OSError:\n        pass\ntime.sleep(300)\n"
    before = _running()
    result = run_program(program, SandboxLimits(timeout_s=1.0), isolation=layer)
    assert (result.passed, result.status) == (False, "timeout")
    _assert_nothing_survives(before)


@pytest.mark.parametrize("layer", ISOLATED)
def test_network_is_refused(layer):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n"
        result = run_program(program, FAST, isolation=layer)
        assert (result.passed, result.status) == (False, "failed")
        with pytest.raises(BlockingIOError):
            server.accept()


@pytest.mark.parametrize("layer", [_layer_param("bubblewrap")])
def test_writing_outside_its_directory_fails(layer, tmp_path):
    target = tmp_path / "escaped.txt"
    home_file = Path.home() / "fedpeft-sandbox-escape.txt"
    repo_file = os.path.join(os.getcwd(), "fedpeft-sandbox-escape.txt")
    for path in (target, home_file):
        assert run_program(f"open({str(path)!r}, 'w').write('x')\n", FAST, isolation=layer).status == "failed"
    repo_write = run_program(f"open({repo_file!r}, 'w').write('x')\n", FAST, isolation=layer)
    if not os.getcwd().startswith("/tmp/"):  # a clone under /tmp (CI's) is inside the sample's private /tmp,
        assert repo_write.status == "failed"  # where the write lands and vanishes with it
    assert not target.exists() and not home_file.exists()
    assert not os.path.exists(repo_file)


@pytest.mark.parametrize("layer", ALL)
def test_the_callers_environment_is_not_visible(layer, monkeypatch):
    monkeypatch.setenv("FEDPEFT_SANDBOX_SECRET", "hunter2")
    program = "import os\nassert 'FEDPEFT_SANDBOX_SECRET' not in os.environ, os.environ\nassert 'hunter2' not in str(os.environ)\n"
    assert run_program(program, FAST, isolation=layer).passed


@pytest.mark.parametrize("layer", ISOLATED)
def test_cannot_kill_its_parent(layer):
    program = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    run_program(program, FAST, isolation=layer)
    assert psutil.Process().is_running()  # we are still here


@pytest.mark.parametrize("layer", ALL)
def test_results_keep_their_order_in_parallel(layer):
    programs = [f"import time\ntime.sleep({0.05 * (i % 3)})\nassert {i} % 2 == 0\n" for i in range(8)]
    results = run_programs(programs, FAST, workers=4, isolation=layer)
    assert [r.passed for r in results] == [i % 2 == 0 for i in range(8)]
    assert run_programs([], FAST) == []


def test_unavailable_layer_is_refused_with_a_clear_message(monkeypatch):
    from fedpeft.evaluation import sandbox_layers as sandbox

    monkeypatch.setitem(sandbox._available, "seccomp", False)
    with pytest.raises(SandboxError, match="sandbox isolation 'seccomp' is not available here"):
        run_program("pass", FAST, isolation="seccomp")


def test_a_missing_bubblewrap_is_warned_not_silent(monkeypatch):
    from fedpeft.evaluation import sandbox_layers as sandbox

    monkeypatch.setattr(sandbox, "_chosen", [])
    monkeypatch.setitem(sandbox._available, "bubblewrap", False)
    monkeypatch.setitem(sandbox._available, "seccomp", True)
    with pytest.warns(RuntimeWarning, match=r"bubblewrap \(bwrap\) is not available: .* a seccomp filter"):
        assert sandbox.isolation() == "seccomp"
    monkeypatch.setattr(sandbox, "_chosen", [])
    monkeypatch.setitem(sandbox._available, "seccomp", False)
    monkeypatch.setattr(sandbox, "_can_drop_uid", lambda: True)
    with pytest.warns(RuntimeWarning, match="resource limits only"):
        assert sandbox.isolation() == "none"


def test_no_isolation_as_root_is_refused_unless_accepted(monkeypatch):
    from fedpeft.evaluation import sandbox_layers as sandbox

    monkeypatch.setattr(sandbox, "_chosen", [])
    monkeypatch.setitem(sandbox._available, "bubblewrap", False)
    monkeypatch.setitem(sandbox._available, "seccomp", False)
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 0)
    monkeypatch.setattr(sandbox, "_can_drop_uid", lambda: False)
    monkeypatch.delenv(sandbox.ALLOW_UNISOLATED, raising=False)
    with pytest.raises(SandboxError, match=r"would run as root with resource limits only .*apt-get install bubblewrap"):
        sandbox.isolation()
    monkeypatch.setenv(sandbox.ALLOW_UNISOLATED, "1")
    with pytest.warns(RuntimeWarning, match="resource limits only"):
        assert sandbox.isolation() == "none"


@pytest.mark.skipif(not isolation_available("bubblewrap"), reason="bwrap cannot run here")
def test_bubblewrap_runs_an_interpreter_that_lives_under_tmp(tmp_path):
    """CI clones into /tmp: the sandbox's private /tmp must not hide the interpreter (it did: every bubblewrap
    test was skipped in CI)."""
    import subprocess
    import sys
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert str(venv).startswith("/tmp/")
    paths = [str(Path(sandbox_module.__file__).parents[2]), sysconfig.get_paths()["purelib"]]
    code = (
        f"import sys; sys.path[:0] = {paths!r}\n"
        "from fedpeft.evaluation.sandbox import isolation_available, why_unavailable, run_program\n"
        "assert isolation_available('bubblewrap'), why_unavailable('bubblewrap')\n"
        "assert run_program('assert 2 + 2 == 4', isolation='bubblewrap').passed\n"
    )
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_why_bubblewrap_is_unavailable_is_said(monkeypatch):
    from fedpeft.evaluation import sandbox_layers

    monkeypatch.setattr(sandbox_layers.shutil, "which", lambda name: None)
    monkeypatch.setattr(sandbox_layers, "_why_not", {})
    assert not sandbox_layers._probe_bwrap()
    assert "bwrap is not installed (apt-get install bubblewrap)" in sandbox_layers.why_unavailable("bubblewrap")


@pytest.mark.parametrize("layer", ISOLATED)
def test_samples_start_no_processes_but_threads_run(layer):
    """Under bubblewrap too: bwrap gets the seccomp filter (--seccomp), since a fork bomb in a pid namespace
    still filled this machine's process table before the namespace's teardown ended."""
    if layer == "bubblewrap" and not isolation_available("seccomp"):
        pytest.skip("the seccomp filter is not available here")
    forking = "import os\ntry:\n    os.fork()\nexcept PermissionError:\n    pass\nelse:\n    raise SystemExit(3)\n"
    assert run_program(forking, FAST, isolation=layer).passed
    spawning = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'])\n"
    assert run_program(spawning, FAST, isolation=layer).status == "failed"
    threads = "import threading\nt = threading.Thread(target=lambda: None)\nt.start()\nt.join()\n"
    assert run_program(threads, FAST, isolation=layer).passed
