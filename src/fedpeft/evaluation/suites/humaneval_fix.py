"""HumanEvalFix (Muennighoff et al., 2023, HumanEvalPack): repair a buggy HumanEval function, scored by its tests.

By default the bugs are fedpeft's own: each problem's correct function (prompt + canonical solution) gets one
bug from :func:`fedpeft.data.defects.inject_bug`, seeded per problem by ``[seed, problem index]``, so a seed
always gives the same 164-minus-a-few problems. ``source`` may instead name a local ``.jsonl``/``.json`` file in
the HumanEvalPack schema (bigcode/humanevalpack, ``python`` rows, read with plain ``json``) or that hub id.

Notable choices:
- Only the entry-point function is mutated; the statements before it (imports, helper functions such as
  HumanEval/10's ``is_palindrome``, constants) are the module's *preamble*, shown to the model and put back
  unchanged in front of every answer, as HumanEvalPack's ``declaration`` does. Correct and buggy code both go
  through ``ast.unparse``, so they differ in the bug alone, never in formatting or comments.
- Problems the injector cannot mutate are left out; :meth:`HumanEvalFix.injection_report` says how many, and
  how many mutated functions still pass their tests (a mutation that is no bug), by running them.
- The model sees the preamble, the buggy function and the tests (HumanEvalFix's "tests" variant), then a
  comment and the ``def`` line of the fix, so a base model continues a body. An answer is a whole function
  (``join="whole"``) when it defines the entry point at top level, else it continues that ``def`` line:
  :func:`function_program` accepts both, and the canonical answer is the whole correct function.
- File rows follow the real benchmark: the buggy function is ``declaration + buggy_solution`` (no docstring).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpeft.data.defects import inject_bug
from fedpeft.data.sources import DataSourceError
from fedpeft.evaluation.sandbox import SandboxLimits, run_programs
from fedpeft.evaluation.suites import SUITES
from fedpeft.evaluation.suites.base import Problem, Suite, strip_fence
from fedpeft.evaluation.suites.humaneval import humaneval_rows, tests_of
from fedpeft.registry import setting

HUMANEVALPACK = "bigcode/humanevalpack"
PACK_COLUMNS = (
    "task_id",
    "prompt",
    "declaration",
    "canonical_solution",
    "buggy_solution",
    "entry_point",
    "import",
    "test_setup",
    "test",
)
"""The HumanEvalPack columns this suite reads (the schema's others, bug_type included, are optional)."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".jsonl", ".json")


# ---------------------------------------------------------------------------------------------- code parts


def split_entry(code: str, entry_point: str) -> tuple[str, str]:
    """(preamble, function): the top-level statements before ``entry_point``'s ``def`` and the ``def`` itself,
    each as ``ast.unparse`` writes it. A ValueError if the code has no such function or anything after it."""
    tree = ast.parse(code)
    at = [
        i
        for i, node in enumerate(tree.body)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry_point
    ]
    if not at:
        raise ValueError(f"the code defines no top-level function {entry_point!r}")
    if at[-1] != len(tree.body) - 1:
        raise ValueError(f"the code has statements after its function {entry_point!r}; it must end with it")
    preamble = ast.unparse(ast.Module(body=tree.body[: at[-1]], type_ignores=[]))
    return preamble, ast.unparse(tree.body[at[-1]])


def header_of(function: str) -> str:
    """The ``def`` line of an unparsed function (with any decorators above it), newline-terminated."""
    lines = function.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(("def ", "async def ")))
    return "\n".join(lines[: at + 1]) + "\n"


def defines_function(code: str, name: str) -> bool:
    """Whether ``code`` parses and defines the function ``name`` at its top level."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name for n in tree.body)


def function_program(preamble: str, header: str, completion: str, tests: str, entry_point: str) -> str:
    """The program for an answer that is either a whole function (it defines ``entry_point``; a Markdown fence
    around it is dropped) or the body continuing ``header``: preamble, the function, the tests."""
    code = strip_fence(completion)
    function = code if defines_function(code, entry_point) else header + completion
    return "\n\n".join(part for part in (preamble, function, tests) if part) + "\n"


# ---------------------------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class HumanEvalFixSettings:
    source: str = setting(
        "",
        "Where the bugs come from: empty for fedpeft's own injection into HumanEval (seeded by eval.suite_seed), "
        f"a local .jsonl/.json file in the HumanEvalPack python schema, or the hub id {HUMANEVALPACK}.",
    )

    def __post_init__(self) -> None:
        if self.source and not (self.source.endswith(_FILE_SUFFIXES) or _HUB_ID.match(self.source)):
            raise ValueError(
                f"source={self.source!r} is not valid; valid: empty (built-in bug injection), a .jsonl or .json "
                f"file in the HumanEvalPack schema, or a hub id such as {HUMANEVALPACK}"
            )


@dataclass(frozen=True)
class InjectionReport:
    """What the built-in injection made of HumanEval for one seed."""

    total: int
    """HumanEval's problems."""
    unmutated: tuple[str, ...]
    """Task ids the injector found nothing to mutate in (left out of the suite)."""
    unbroken: tuple[str, ...]
    """Task ids whose mutated function still passes its tests (kept: a model's copy of it passes too)."""

    @property
    def problems(self) -> int:
        return self.total - len(self.unmutated)


def fix_problem(
    task_id: str,
    preamble: str,
    correct: str,
    buggy: str,
    tests: str,
    entry_point: str,
    meta: Mapping[str, Any] | None = None,
) -> Problem:
    """One HumanEvalFix problem from its parts (functions as ``ast.unparse`` writes them)."""
    header = header_of(correct)
    shown = "\n\n".join(part for part in (preamble, buggy, tests.rstrip()) if part)
    return Problem(
        task_id=task_id,
        prompt=f"{shown}\n\n\n# {entry_point} with its bug fixed\n{header}",
        instruction=f"Fix bugs in {entry_point}.",
        test=tests,
        entry_point=entry_point,
        join="whole",
        canonical=correct,
        meta={"preamble": preamble, "header": header, "buggy": buggy, **(meta or {})},
    )


def injected_problems(seed: int) -> tuple[list[Problem], list[str]]:
    """(problems, task ids left out): one injected bug per HumanEval problem, the generator seeded by
    ``[seed, problem index]``."""
    problems, unmutated = [], []
    for i, row in enumerate(humaneval_rows()):
        preamble, correct = split_entry(row["prompt"] + row["canonical_solution"], row["entry_point"])
        bug = inject_bug(correct, np.random.default_rng([seed, i]))
        if bug is None:
            unmutated.append(row["task_id"])
            continue
        buggy, kind = bug
        meta = {"bug_type": kind}
        problems.append(fix_problem(row["task_id"], preamble, correct, buggy, tests_of(row), row["entry_point"], meta))
    return problems, unmutated


def read_pack_rows(source: str) -> list[dict[str, Any]]:
    """The rows of a local HumanEvalPack file (JSON Lines, or a JSON list of objects), columns checked."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataSourceError(f"HumanEvalPack file {source!r} (humaneval-fix source) does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataSourceError(f"HumanEvalPack file {source!r} is not readable JSON ({err})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise DataSourceError(f"HumanEvalPack file {source!r} must hold JSON objects, one per problem")
    if not rows:
        raise DataSourceError(f"HumanEvalPack file {source!r} has no rows")
    check_pack_rows(source, rows)
    return rows


def check_pack_rows(source: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Every row has every column this suite reads, as a string; the first gap is named with its row."""
    for number, row in enumerate(rows, 1):
        for column in PACK_COLUMNS:
            if not isinstance(row.get(column), str):
                found = "missing" if column not in row else f"a {type(row[column]).__name__}"
                raise DataSourceError(
                    f"HumanEvalPack source {source!r} row {number} ({row.get('task_id', '?')}): column {column!r} is "
                    f"{found}, not a string; the suite needs: {', '.join(PACK_COLUMNS)}"
                )


def load_hub_rows(hub_id: str) -> list[dict[str, Any]]:
    """HumanEvalPack's python rows from the Hugging Face hub (a clear error when it cannot be reached)."""
    try:
        import datasets

        table = datasets.load_dataset(hub_id, "python", split="test")
    except Exception as err:  # offline, missing or gated: the same for the user
        raise DataSourceError(
            f"could not load {hub_id!r} (config 'python') from the Hugging Face hub ({type(err).__name__}: {err}); "
            "without hub access, save its python rows as a .jsonl file and set the suite's source to that file"
        ) from None
    rows = [dict(r) for r in table]
    check_pack_rows(hub_id, rows)
    return rows


def pack_tests(row: Mapping[str, Any]) -> str:
    """A row's test code, with the ``check(entry_point)`` call appended unless the test already makes it."""
    test = row["test"]
    try:
        body = ast.parse(test).body
    except SyntaxError:
        body = []
    calls = any(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == "check"
        for n in body
    )
    return test if calls else f"{test}\n\ncheck({row['entry_point']})\n"


def pack_problems(source: str, rows: Sequence[Mapping[str, Any]]) -> list[Problem]:
    """HumanEvalFix problems from HumanEvalPack rows: ``declaration + buggy_solution`` to fix."""
    problems = []
    for row in rows:
        entry = row["entry_point"]
        try:
            preamble, correct = split_entry(row["declaration"] + row["canonical_solution"], entry)
            _, buggy = split_entry(row["declaration"] + row["buggy_solution"], entry)
        except (SyntaxError, ValueError) as err:
            raise DataSourceError(
                f"HumanEvalPack source {source!r} ({row['task_id']}): declaration + canonical_solution / "
                f"buggy_solution is not a Python module ending with {entry!r} ({err})"
            ) from None
        setup = (row["import"] + row["test_setup"]).strip()
        preamble = "\n\n".join(part for part in (setup, preamble) if part)
        meta = {"bug_type": row.get("bug_type", "")}
        problems.append(fix_problem(row["task_id"], preamble, correct, buggy, pack_tests(row), entry, meta))
    return problems


def still_passing(
    problems: Sequence[Problem], limits: SandboxLimits | None = None, workers: int | None = None
) -> list[str]:
    """Task ids whose *buggy* function passes its tests (run in the sandbox): bugs that are none."""
    programs = [
        function_program(p.meta["preamble"], p.meta["header"], p.meta["buggy"], p.test, p.entry_point) for p in problems
    ]
    results = run_programs(programs, limits or SandboxLimits(), workers=workers)
    return [p.task_id for p, r in zip(problems, results, strict=True) if r.passed]


@SUITES.register("humaneval-fix")
class HumanEvalFix(Suite):
    """HumanEvalFix: repair one bug in a HumanEval function, shown with its tests (pass@k of the fixed one)."""

    Settings = HumanEvalFixSettings

    def problems(self, seed: int) -> list[Problem]:
        source = self.settings.source
        if not source:
            return injected_problems(seed)[0]
        rows = read_pack_rows(source) if source.endswith(_FILE_SUFFIXES) else load_hub_rows(source)
        return pack_problems(source, rows)

    def program(self, problem: Problem, completion: str) -> str:
        meta = problem.meta
        return function_program(meta["preamble"], meta["header"], completion, problem.test, problem.entry_point)

    def injection_report(
        self, seed: int, limits: SandboxLimits | None = None, workers: int | None = None
    ) -> InjectionReport:
        """How the built-in injection fared for ``seed``: problems left out, bugs that break nothing."""
        problems, unmutated = injected_problems(seed)
        return InjectionReport(len(humaneval_rows()), tuple(unmutated), tuple(still_passing(problems, limits, workers)))
