"""The import contract in pyproject.toml (DESIGN.md's layers) holds for the source tree, and is live: it
breaks on a deliberate upward import, a cycle between layers, and an undeclared top-level module."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed in this environment")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "NO_COLOR": "1"}
    result = subprocess.run(
        [str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result.stdout = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # its colours
    return result


def copy_tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "fedpeft", tmp_path / "src" / "fedpeft", ignore=shutil.ignore_patterns("*.pyc"))
    return tmp_path


def test_the_source_tree_keeps_every_contract():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        # a leaf reaching up into the experiment
        (
            "tensors/__init__.py",
            "import fedpeft.experiment.run",
            "fedpeft.tensors is not allowed to import fedpeft.experiment",
        ),
        # a runtime reading the config (config is read by the experiment only)
        ("runtime/local.py", "import fedpeft.config.schema", "fedpeft.runtime is not allowed to import fedpeft.config"),
        # models -> data, the import the architecture issue removed
        ("models/state.py", "import fedpeft.data.partition", "fedpeft.models is not allowed to import fedpeft.data"),
        # two siblings of one layer importing each other is a cycle
        ("data/partition.py", "import fedpeft.fl.sampling", "fedpeft.data is not allowed to import fedpeft.fl"),
        # the federation reading data (only the experiment and the evaluation suites may)
        ("fl/sampling.py", "import fedpeft.data.partition", "fedpeft.fl is not allowed to import fedpeft.data"),
        # inside the experiment: the round loop reaching up to the run that calls it
        ("experiment/fit.py", "import fedpeft.experiment.run", "fedpeft.experiment.fit is not allowed to import"),
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path, module, line, expected):
    root = copy_tree(tmp_path)
    path = root / "src" / "fedpeft" / module
    path.write_text(path.read_text() + f"\n{line}  # deliberate\n")
    result = lint(root)
    assert result.returncode != 0
    assert expected in result.stdout, result.stdout


def test_an_undeclared_top_level_module_breaks_the_contract(tmp_path):
    root = copy_tree(tmp_path)
    (root / "src" / "fedpeft" / "gadgets.py").write_text('"""Not placed in any layer."""\n')
    result = lint(root)
    assert result.returncode != 0
    assert "gadgets" in result.stdout, result.stdout
