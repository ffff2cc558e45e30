"""Ctrl-C during a real ``fedpeft run`` process leaves a run directory that resumes to completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fedpeft.experiment.run import run_experiment
from fedpeft.reporting.checkpoint import list_checkpoints
from tests.integration.conftest import MICRO


def completed_rounds(runs_dir) -> int:
    """Rounds with a finished checkpoint in the (single) live run directory."""
    return max((len(list_checkpoints(d)) for d in runs_dir.glob("*")), default=0)


@pytest.mark.slow
def test_sigint_mid_run_exits_130_and_resumes(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "fedpeft.cli", "run", "default", "--quiet"]
    for item in [*MICRO, "fl.rounds=40", "output.keep_checkpoints=100", f"output.dir={out}"]:
        cmd += ["--set", item]
    # A job started in the background of a non-interactive shell (as CI may be) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler; the child gets the default disposition back, as a
    # user's terminal gives it.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if completed_rounds(out) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert "fedpeft run --resume" in output
    (run_dir,) = out.iterdir()
    done = list_checkpoints(run_dir)[-1]
    last = int(done.name.split("-")[1])
    assert 2 <= last < 40
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_completed"] == last
    log_lines = (run_dir / "metrics.jsonl").read_text().splitlines()

    _, summary = run_experiment(resume_dir=run_dir, overrides=["fl.rounds=" + str(last + 1)], quiet=True)
    assert summary["status"] == "completed" and summary["rounds_completed"] == last + 1
    assert max(json.loads(line)["round"] for line in log_lines) == last  # cut back at the interrupt
    rounds = [json.loads(line)["round"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(rounds)) == list(range(last + 2))
