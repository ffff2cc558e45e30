"""Hostile input through the real CLI: seeded malformed configs, data files and damaged run directories.

Every case (``fuzz_inputs``) must be refused the same way: a non-zero exit, one short message on stderr that
starts with ``error:`` and names the key or file at fault, no traceback (in process: the CLI exits with
``SystemExit``, never another exception), and nothing written: the case's directory (its cwd, output.dir and
inputs, and for ``--resume`` the damaged run directory) holds byte-identical files afterwards. Most cases run
in process through ``CliRunner``; a few through the installed ``fedpeft`` script, as a user runs it.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedpeft.cli import app
from fedpeft.config import load_config
from fedpeft.experiment.run import run_experiment
from tests.integration.conftest import MICRO
from tests.integration.fuzz_inputs import (
    NEWEST,
    SEED,
    Case,
    Runs,
    config_cases,
    data_cases,
    resume_cases,
)

MAX_LINES, MAX_CHARS = 15, 2000
CONFIG_CASES = config_cases(random.Random(SEED))
DATA_CASES = data_cases(random.Random(SEED + 1))
RESUME_CASES = resume_cases(random.Random(SEED + 2))


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's SHA-256, or 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_refused(code: int | None, stdout: str, stderr: str, mentions: list[str]) -> None:
    """A clean refusal: exit status, one short ``error:`` message naming ``mentions``, no traceback."""
    assert code not in (0, None), f"accepted: {stdout[-800:]}{stderr[-800:]}"
    assert "Traceback" not in stdout + stderr, stdout + stderr
    message = stderr.strip()
    assert message.startswith("error:"), f"stdout: {stdout[-800:]!r}\nstderr: {stderr[-1500:]!r}"
    assert not stdout.strip(), stdout
    assert len(message) <= MAX_CHARS and len(message.splitlines()) <= MAX_LINES, message
    for word in mentions:
        assert word in message, f"{word!r} not in: {message}"


@pytest.fixture(scope="module", autouse=True)
def datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    """The datasets library caches every file it parses: keep that out of the user's home cache."""
    import datasets

    previous = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("datasets-cache")
    yield
    datasets.config.HF_DATASETS_CACHE = previous


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """A real completed micro run (2 clients, 2 rounds, both checkpoints kept) and another with peft.r=4."""
    out = tmp_path_factory.mktemp("fuzz-runs")
    completed, _ = run_experiment(load_config("default", [*MICRO, f"output.dir={out / 'a'}"]), quiet=True)
    fast = ["train.max_steps=1", "eval.every=0", "eval.clients=false", "peft.r=4", f"output.dir={out / 'b'}"]
    other, _ = run_experiment(load_config("default", [*MICRO, *fast]), quiet=True)
    assert (completed / NEWEST / "global.safetensors").is_file() and (other / NEWEST).is_dir()
    return Runs(completed=completed, other=other)


def refused_in_process(case: Case, case_dir: Path, runs: Runs | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the case in ``case_dir`` (also the cwd and output.dir), run it, check the refusal and that no file
    changed there, nor in the module's runs its damaged copy came from (their config.yaml names that output.dir)."""
    case_dir.mkdir()
    monkeypatch.chdir(case_dir)
    args, mentions = case.build(case_dir, runs)
    watched = [case_dir] + ([runs.completed.parent.parent] if runs else [])
    before = [snapshot(root) for root in watched]
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert_refused(result.exit_code, result.stdout, result.stderr, mentions)
    assert [snapshot(root) for root in watched] == before, "files were written, changed or removed"


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.id for c in CONFIG_CASES])
def test_bad_config_is_refused(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused_in_process(case, tmp_path / "case", None, monkeypatch)


@pytest.mark.parametrize("case", DATA_CASES, ids=[c.id for c in DATA_CASES])
def test_bad_data_file_is_refused(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refused_in_process(case, tmp_path / "case", None, monkeypatch)


@pytest.mark.parametrize("case", RESUME_CASES, ids=[c.id for c in RESUME_CASES])
def test_damaged_run_directory_is_refused_untouched(
    case: Case, runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused_in_process(case, tmp_path / "case", runs, monkeypatch)


def _pick(cases: list[Case], kind: str) -> Case:
    return next(c for c in cases if c.id.split("-", 1)[1].startswith(kind))


SCRIPT_CASES = [
    _pick(CONFIG_CASES, "directory-recipe"),
    _pick(CONFIG_CASES, "non-utf8-file"),
    _pick(DATA_CASES, "binary-garbage"),
    _pick(RESUME_CASES, "truncated-checkpoint"),
    _pick(RESUME_CASES, "other-run-global"),
]


@pytest.mark.parametrize("case", SCRIPT_CASES, ids=[c.id for c in SCRIPT_CASES])
def test_installed_script_refuses_without_traceback(case: Case, runs: Runs, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "fedpeft"
    if not script.exists():
        script = Path(shutil.which("fedpeft") or "fedpeft")
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    args, mentions = case.build(case_dir, runs)
    before = snapshot(case_dir)
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "datasets-cache"))
    proc = subprocess.run([str(script), *args], cwd=case_dir, capture_output=True, text=True, timeout=300, env=env)
    assert_refused(proc.returncode, proc.stdout, proc.stderr, mentions)
    assert proc.returncode == 2
    assert snapshot(case_dir) == before
