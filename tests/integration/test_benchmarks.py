"""Every script under benchmarks/ runs: each is started as its own process at its smallest size, must exit 0
and print its table (header and rows of numbers). The figures themselves are never checked.

A script without an entry in ``SMOKE`` fails here, so a new benchmark cannot go untested. Each run carries a
unique marker in its environment; whatever process still carries it once the script has exited (a Ray
worker, a Flower node) is killed and fails the test. One OpenMP thread per process: on a small shared machine
several threads per process make every run slower, and the figures do not matter here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
NUMBER = r"[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?"
MARKER = "FEDPEFT_BENCHMARK_SMOKE"
SMALL_DATA = ("--set", "data.max_rows=120", "--set", "data.test_size=12")


def table(columns: list[str], labels: int, rows: list[str]) -> Callable[[str], None]:
    """A markdown table with exactly ``columns``, holding one row per name in ``rows`` whose first ``labels``
    cells are text and the others numbers."""

    def check(out: str) -> None:
        lines = out.splitlines()
        header = "| " + " | ".join(columns) + " |"
        assert header in lines, f"no table header {header!r} in:\n{out}"
        body = lines[lines.index(header) + 2 :]
        found = {}
        for line in body:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            found[cells[0]] = cells
        for name in rows:
            assert name in found, f"no table row {name!r} in:\n{out}"
            cells = found[name]
            assert len(cells) == len(columns), f"row {cells} does not fit the header {columns}"
            assert all(re.fullmatch(NUMBER, c) for c in cells[labels:]), f"row {name!r} is not numbers: {cells}"

    return check


def text_lines(*patterns: str) -> Callable[[str], None]:
    """Lines matching each of ``patterns`` (``{n}`` stands for a number, a space for any run of spaces)."""

    def check(out: str) -> None:
        for pattern in patterns:
            regex = r"\s+".join(re.escape(word) for word in pattern.split()).replace(re.escape("{n}"), NUMBER)
            assert re.search(regex, out), f"no line like {pattern!r} in:\n{out}"

    return check


@dataclass(frozen=True)
class Smoke:
    args: tuple[str, ...]
    check: Callable[[str], None]
    slow: bool = True


MEMORY_OPTIONS = ["baseline", "checkpointing", "packing", "bf16", "fp16"]
"""memory_speed.py's options without 4bit/8bit: quantised bases are the quantisation tests' (test_peft_methods,
test_training_options) to cover."""
SMOKE = {
    "overhead.py": Smoke(
        ("--model", "builtin:micro", "--clients", "2", "--rounds", "1", "--steps", "1", "--repeats", "1"),
        text_lines(
            "plain peft loop median {n} s ({n} ms/step)",
            "federated (local) median {n} s ({n} ms/step)",
            "wall(federated)/wall(plain) = {n}",
            "federated, {n} steps in all: 2 clients {n} MB, 20 clients {n} MB",
            "ratio 20/2 = {n}",
        ),
    ),
    "offline_tasks.py": Smoke(
        ("--model", "builtin:micro", "--tasks", "instruction", "--clients", "2", "--rounds", "1", "--steps", "1")
        + ("--rows", "120", "--test-size", "12"),
        table(
            ["task", "metric", "before", "centralised", "FedAvg", "single client", "test rows", "minutes"],
            2,
            ["instruction"],
        ),
        slow=False,
    ),
    "memory_speed.py": Smoke(
        ("--model", "builtin:micro", "--options", ",".join(MEMORY_OPTIONS), "--steps", "1")
        + ("--batch-size", "2", "--micro-batch-size", "2", *SMALL_DATA),
        table(
            ["option", "device", "seconds", "tokens/s", "model weights (MB)", "peak memory (MB)", "train loss"],
            2,
            MEMORY_OPTIONS,
        ),
    ),
    "flower_overhead.py": Smoke(
        ("--model", "builtin:micro", "--rounds", "4", "--steps", "1", "--runtimes", "local,flower-sim", *SMALL_DATA),
        table(
            [
                "runtime",
                "message MB",
                "median round (s)",
                "overhead vs local (s)",
                "max abs adapter difference vs local",
            ],
            1,
            ["local", "flower-sim"],
        ),
    ),
    "code_eval.py": Smoke(
        ("--model", "builtin:micro", "--problems", "2", "--max-new-tokens", "8", "--programs", "4"),
        lambda out: (
            table(
                ["generation", "batch size", "sequences", "tokens", "seconds", "tokens/s", "speed-up"],
                1,
                [
                    "greedy n=1, one prompt at a time",
                    "greedy n=1, batched",
                    "sampled n=5, one prompt at a time",
                    "sampled n=5, batched",
                ],
            )(out),
            table(["isolation, workers", "programs", "passed", "seconds", "samples/s", "speed-up"], 1, ["none x1"])(
                out
            ),
        ),
        slow=False,
    ),
    "serve_throughput.py": Smoke(
        ("--model", "builtin:micro", "--requests", "4", "--max-tokens", "4", "--concurrency", "1,2")
        + ("--rows", "120", "--test-size", "12"),
        table(
            [
                "setting",
                "clients",
                "requests",
                "tokens",
                "seconds",
                "requests/s",
                "tokens/s",
                "batches",
                "vs plain loop",
            ],
            1,
            ["plain model.generate loop", "fedpeft serve, 1 client", "fedpeft serve, 2 clients"],
        ),
    ),
    "sandbox_hostile.py": Smoke(
        ("--layers", "seccomp", "--samples", "os._exit,output"),
        lambda out: (
            table(
                ["layer", "sample", "status", "passed", "seconds", "harness alive", "no survivors", "files untouched"]
                + ["no connection", "secret kept"],
                5,
                [],
            )(out),
            text_lines("samples that got anything past the sandbox: 0")(out),
        ),
        slow=False,
    ),
}


def marked_processes(mark: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER) == mark:
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def survivors(mark: str, grace: float = 30.0) -> list[str]:
    """The processes still carrying ``mark`` after ``grace`` seconds (Ray's actors exit asynchronously after
    its shutdown), killed; a description of each."""
    deadline = time.monotonic() + grace
    while (alive := marked_processes(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    described = []
    for proc in alive:
        try:
            described.append(f"{proc.pid}: {' '.join(proc.cmdline())[:160]}")
            proc.kill()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return described


def run_benchmark(script: str, args: tuple[str, ...], timeout: float = 900) -> subprocess.CompletedProcess:
    mark = uuid.uuid4().hex
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "FEDPEFT_CACHE": os.environ["FEDPEFT_CACHE"],
        "OMP_NUM_THREADS": "1",
        MARKER: mark,
    }
    proc = subprocess.Popen(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    except BaseException:  # the test itself interrupted: stop the run and what it started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        survivors(mark, grace=0)
        raise
    left = survivors(mark)
    assert not timed_out, f"{script} ran past {timeout} s:\n{out}\n{err[-4000:]}"
    assert not left, f"{script} left processes behind: {left}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def scripts() -> list[str]:
    return sorted(p.name for p in BENCHMARKS.glob("*.py"))


def test_every_smoke_entry_names_a_script():
    stale = set(SMOKE) - set(scripts())
    assert not stale, f"SMOKE names scripts that are no longer in benchmarks/: {sorted(stale)}"


@pytest.mark.parametrize(
    "script", [pytest.param(s, marks=[pytest.mark.slow] if s in SMOKE and SMOKE[s].slow else []) for s in scripts()]
)
def test_benchmark_runs_and_prints_its_table(script):
    assert script in SMOKE, f"benchmarks/{script} has no smoke test: add its smallest run to SMOKE in {__file__}"
    smoke = SMOKE[script]
    result = run_benchmark(script, smoke.args)
    assert result.returncode == 0, f"{script} exited {result.returncode}:\n{result.stdout}\n{result.stderr[-4000:]}"
    smoke.check(result.stdout)
