"""The ``defect-yesno`` and ``clone-yesno`` suites and the YES/NO answer reader they are scored with."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import pytest

from fedpeft.data.defects import normalize_code, parses
from fedpeft.data.stdlib_corpus import load_stdlib_corpus
from fedpeft.data.tasks.clone import clone_rows
from fedpeft.data.tasks.defect import defect_rows
from fedpeft.evaluation.suites import SUITES, run_suite
from fedpeft.evaluation.suites.base import Problem, RunSettings, answer_of, format_prompt
from fedpeft.evaluation.suites.yesno import CloneYesNo, DefectYesNo

SUITE_CLASSES = [DefectYesNo, CloneYesNo]


def held_out(qualname: str) -> bool:
    """The corpus's split rule, recomputed: the last 5 of 100 hash buckets are the test split."""
    return int(hashlib.sha1(qualname.encode()).hexdigest()[:8], 16) % 100 >= 95


@pytest.fixture(scope="module")
def held_out_records():
    return [r for r in load_stdlib_corpus() if held_out(r.qualname)]


@pytest.fixture(scope="module", params=SUITE_CLASSES, ids=lambda c: c.name)
def suite_and_problems(request) -> tuple[type, list[Problem]]:
    return request.param, request.param().problems(0)


def scripted(answer_of_problem: Callable[[Problem], str], problems: Sequence[Problem], prompt_format: str = "plain"):
    by_prompt = {format_prompt(p, prompt_format): p for p in problems}
    if prompt_format != "plain":  # the YES/NO suites show the instruction formats no code prompt
        by_prompt = {format_prompt(Problem(p.task_id, "", p.instruction), prompt_format): p for p in problems}

    def ask(prompts: Sequence[str], n: int, temperature: float, stop: Sequence[str]) -> list[list[str]]:
        return [[answer_of_problem(by_prompt[prompt])] * n for prompt in prompts]

    return ask


def test_registered_as_yesno():
    for cls in SUITE_CLASSES:
        assert SUITES.get(cls.name) is cls and cls.scoring == "yesno"
    assert {c.name for c in SUITE_CLASSES} == {"defect-yesno", "clone-yesno"}


def test_gold_answers_score_one(suite_and_problems):
    cls, problems = suite_and_problems
    result = run_suite(cls(), scripted(lambda p: " Yes." if p.answer else " No, it is not.", problems), RunSettings())
    assert result.metrics["accuracy"] == 1.0
    assert result.metrics["pass@1"] == 1.0
    assert result.metrics["unparsed"] == 0.0
    assert result.metrics["problems"] == len(problems) > 50


def test_always_yes_scores_the_positive_rate(suite_and_problems):
    cls, problems = suite_and_problems
    positives = sum(p.answer is True for p in problems)
    negatives = sum(p.answer is False for p in problems)
    assert positives == negatives  # balanced
    yes = run_suite(cls(), scripted(lambda p: "Yes", problems), RunSettings())
    no = run_suite(cls(), scripted(lambda p: "No", problems), RunSettings())
    assert yes.metrics["accuracy"] == positives / len(problems)
    assert no.metrics["accuracy"] == negatives / len(problems)
    assert {s.status for s in yes.samples} == {"correct", "wrong"}


def test_gibberish_is_unparsed(suite_and_problems):
    cls, problems = suite_and_problems
    result = run_suite(cls(), scripted(lambda p: "qwerty zxcv 42", problems), RunSettings(limit=20))
    assert result.metrics["unparsed"] == 1.0
    assert result.metrics["accuracy"] == 0.0
    assert {s.status for s in result.samples} == {"unparsed"}


def test_the_answer_ends_at_a_blank_line(suite_and_problems):
    cls, problems = suite_and_problems
    flipped = lambda p: ("Yes" if p.answer else "No") + "\n\nQuestion: and now? " + ("No" if p.answer else "Yes")  # noqa: E731
    result = run_suite(cls(), scripted(flipped, problems), RunSettings(limit=10))
    assert result.metrics["accuracy"] == 1.0
    assert all("Question" not in s.completion for s in result.samples)


@pytest.mark.parametrize("prompt_format", ["question-answer", "alpaca"])
def test_instruction_formats_show_the_code_once(suite_and_problems, prompt_format):
    cls, problems = suite_and_problems
    seen: list[str] = []

    def ask(prompts, n, temperature, stop):
        seen.extend(prompts)
        return scripted(lambda p: "Yes" if p.answer else "No", problems, prompt_format)(prompts, n, temperature, stop)

    result = run_suite(cls(), ask, RunSettings(limit=5, prompt_format=prompt_format))
    assert result.metrics["accuracy"] == 1.0
    for prompt, problem in zip(seen, problems[:5], strict=True):
        assert prompt.count(problem.meta["code"]) == 1
        assert problem.instruction in prompt


def test_defect_labels_are_the_defect_tasks(held_out_records):
    rows = {(r.text, bool(r.label)) for r in defect_rows(held_out_records)}
    problems = DefectYesNo().problems(0)
    for p in problems:
        assert (p.meta["code"], p.answer) in rows
        assert held_out(p.task_id.removeprefix("defect-yesno/"))
        assert f"```python\n{p.meta['code']}\n```" in p.prompt
    assert len(problems) == 2 * min(sum(label for _, label in rows), sum(not label for _, label in rows))


def test_clone_labels_are_the_clone_tasks(held_out_records):
    rows = {(r.text, r.text_b, bool(r.label)) for r in clone_rows(held_out_records)}
    originals = {normalize_code(r.code) for r in held_out_records if parses(r.code)}
    for p in CloneYesNo().problems(0):
        a, b = p.meta["code"], p.meta["code_b"]
        assert (a, b, p.answer) in rows
        # Every pair holds a held-out function; a negative pair two of them.
        assert (a in originals and b in originals) if not p.answer else (a in originals or b in originals)
        assert f"Snippet 1:\n```python\n{a}\n```\n\nSnippet 2:\n```python\n{b}\n```" in p.prompt


def test_seeded_balanced_and_deterministic():
    first, again, other = DefectYesNo().problems(0), DefectYesNo().problems(0), DefectYesNo().problems(1)
    assert [p.task_id for p in first] == [p.task_id for p in again]
    assert [p.task_id for p in first] != [p.task_id for p in other]
    head = first[:20]
    assert 0 < sum(p.answer for p in head) < len(head)  # shuffled: a limit takes both classes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", True),
        ("No", False),
        (" yes.", True),
        ("\n\nYes, there is an off-by-one in the loop.", True),
        ("No, the code is fine.", False),
        ("NO. It looks correct to me", False),
        ("Yes, they are equivalent. No differences.", True),  # only the first sentence counts
        ("There is no bug here.", False),
        ("The code is buggy because the comparison is reversed.", True),
        ("It contains a bug.", True),
        ("This function is not buggy.", False),
        ("They are clones.", True),
        ("These are not clones.", False),
        ("The two snippets are not equivalent.", False),
        ("The functions do different things.", False),
        ("The code is correct.", False),
        ("Yes and no.", None),
        ("qwerty zxcv", None),
        ("", None),
        ("I cannot tell.", None),
    ],
)
def test_answer_of(text, expected):
    assert answer_of(text) is expected
