"""The ``stdlib-doctest`` suite: held-out stdlib functions judged by their own doctests in the sandbox."""

from __future__ import annotations

import hashlib
import json
import textwrap
from collections.abc import Callable, Sequence

import pytest

from fedpeft.data.stdlib_corpus import FunctionRecord, load_stdlib_corpus
from fedpeft.evaluation.suites import SUITES, run_suite
from fedpeft.evaluation.suites import stdlib_doctest as module
from fedpeft.evaluation.suites.base import Problem, RunSettings, format_prompt
from fedpeft.evaluation.suites.stdlib_doctest import StdlibDoctest, split_at_body, target_of


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    found = StdlibDoctest().problems(0)
    assert found, "no stdlib-doctest problem survived the self-check on this Python"
    return found


def scripted(body_of: Callable[[Problem], str], problems: Sequence[Problem]):
    """An Ask that answers each plain prompt with ``body_of(its problem)``."""
    by_prompt = {format_prompt(p, "plain"): p for p in problems}

    def ask(prompts: Sequence[str], n: int, temperature: float, stop: Sequence[str]) -> list[list[str]]:
        return [[body_of(by_prompt[prompt])] * n for prompt in prompts]

    return ask


def body_indent(problem: Problem) -> str:
    """The indentation of the problem's body (its canonical's first line)."""
    first = next(line for line in problem.canonical.splitlines() if line.strip())
    return first[: len(first) - len(first.lstrip())]


def held_out(qualname: str) -> bool:
    """The corpus's split rule, recomputed: the last 5 of 100 hash buckets are the test split."""
    return int(hashlib.sha1(qualname.encode()).hexdigest()[:8], 16) % 100 >= 95


def test_registered():
    assert SUITES.get("stdlib-doctest") is StdlibDoctest
    assert StdlibDoctest.scoring == "execution"


def test_canonical_bodies_pass(problems):
    result = run_suite(StdlibDoctest(), scripted(lambda p: p.canonical, problems), RunSettings())
    assert result.metrics["pass@1"] == 1.0, [s.detail for s in result.samples if not s.passed]
    assert result.metrics["problems"] == len(problems)


def test_empty_bodies_fail(problems):
    result = run_suite(StdlibDoctest(), scripted(lambda p: "", problems), RunSettings())
    assert result.metrics["pass@1"] == 0.0
    assert {s.status for s in result.samples} == {"failed"}


def test_wrong_bodies_fail(problems):
    """A body that returns a constant is replaced into the module and its doctests catch it (if the program
    ran the library's own function instead, this would pass)."""
    result = run_suite(StdlibDoctest(), scripted(lambda p: f"{body_indent(p)}return 0\n", problems), RunSettings())
    assert result.metrics["pass@1"] == 0.0
    assert all("doctest" in s.detail or "Expected" in s.detail for s in result.samples), result.samples[0].detail


def test_a_subtly_wrong_body_fails(problems):
    """pvariance divided by n - 1 (the sample variance) instead of n: a one-token bug the doctests catch."""
    pvariance = [p for p in problems if p.task_id == "stdlib-doctest/statistics.pvariance"]
    if not pvariance or "ss / n" not in pvariance[0].canonical:
        pytest.skip("statistics.pvariance is written differently on this Python")
    problem = pvariance[0]
    buggy = problem.canonical.replace("ss / n", "ss / (n - 1)")
    result = run_suite(
        StdlibDoctest(), scripted(lambda p: buggy if p is problem else p.canonical, problems), RunSettings()
    )
    verdicts = {s.task_id: s.passed for s in result.samples}
    assert verdicts.pop(problem.task_id) is False
    assert all(verdicts.values())


def test_a_syntax_error_fails(problems):
    result = run_suite(StdlibDoctest(), scripted(lambda p: "    return (\n", problems), RunSettings(limit=1))
    assert result.samples[0].status == "failed" and "SyntaxError" in result.samples[0].detail


def test_problems_come_only_from_the_held_out_split(problems):
    qualnames = [p.task_id.removeprefix("stdlib-doctest/") for p in problems]
    assert all(held_out(q) for q in qualnames)
    assert all(">>>" in p.meta["docstring"] for p in problems)
    assert len(set(qualnames)) == len(qualnames)


def test_listing_is_deterministic(problems):
    assert [p.task_id for p in StdlibDoctest().problems(1)] == [p.task_id for p in problems]


def test_prompt_ends_where_the_body_starts(problems):
    by_name = {r.qualname: r for r in load_stdlib_corpus()}
    for p in problems:
        rec = by_name[p.task_id.removeprefix("stdlib-doctest/")]
        assert p.prompt.rstrip().endswith(('"""', "'''"))
        # Prompt and canonical together are the library's function (re-indented inside its class for a method).
        whole = p.prompt + p.canonical
        expected = rec.code if p.meta["owner"] is None else textwrap.indent(rec.code, "    ")
        assert whole.rstrip().endswith(expected.rstrip())


def test_method_split_keeps_its_class_and_indentation():
    code = (
        'def total(self, extra):\n    """Sum.\n\n    >>> Box().total(1)\n    3\n    """\n'
        "    # the private counter\n    return self.__count + extra"
    )
    rec = FunctionRecord("shelve", "shelve.Box.total", "def total(self, extra):", "Sum.", "", code, "shelve.py", 1)
    target = target_of(rec)
    assert (target.module, target.owner, target.name) == ("shelve", "Box", "total")
    prompt, canonical = split_at_body(rec, target.owner)
    assert prompt.startswith("class Box:\n    def total(self, extra):\n")
    assert prompt.endswith('        """\n')
    assert canonical == "        # the private counter\n        return self.__count + extra\n"


def test_package_modules_resolve():
    rec = FunctionRecord("json", "json.f", "def f():", "d", "", "", "json/__init__.py", 1)
    assert target_of(rec).module == "json"


def test_self_check_is_cached_and_read(problems, tmp_path, monkeypatch):
    path = tmp_path / "check.json"
    monkeypatch.setattr(module, "self_check_path", lambda: path)
    assert [p.task_id for p in StdlibDoctest().problems(0)] == [p.task_id for p in problems]
    verdicts = json.loads(path.read_text())
    assert all(verdicts[p.task_id] == "ok" for p in problems)
    # A cached verdict is trusted: mark one problem dropped and it is no longer listed.
    verdicts[problems[0].task_id] = "dropped by hand"
    path.write_text(json.dumps(verdicts))
    assert [p.task_id for p in StdlibDoctest().problems(0)] == [p.task_id for p in problems[1:]]
