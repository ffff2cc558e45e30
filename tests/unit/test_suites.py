"""Every registered code-evaluation suite through one tester: its reference answers pass in the sandbox,
empty answers fail, its settings are described, and the run's bad inputs are refused with clear messages.

The suites' own files test what is particular to them (bug injection, perturbations, doctests, YES/NO
reading); this tester is what a new suite gets for free, and it fails for a suite whose reference answers
its own harness rejects."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fedpeft.cli import app
from fedpeft.evaluation.passk import pass_at_k
from fedpeft.evaluation.suites import SUITES, RunSettings, SuiteError, run_suite, suite_problems
from fedpeft.evaluation.suites.base import Problem, Suite, answer_of, score

LIMIT = 10
"""Problems per suite here: a multiple of every robustness suite's default variant count keeps whole groups."""


def limit_for(suite: Suite) -> int:
    variants = getattr(suite.settings, "variants", 1)
    return min(max(LIMIT // variants, 1) * variants, len(suite.problems(0)))


def test_the_registry_holds_the_issues_suites():
    expected = {"humaneval", "humaneval-fix", "humaneval-explain", "stdlib-doctest", "defect-yesno", "clone-yesno"}
    expected |= {f"recode-{family}" for family in ("docstring", "format", "func_name", "syntax")}
    assert expected <= set(SUITES.names())
    for name, summary, _ in SUITES.describe():
        assert summary, f"suite {name} has no docstring summary"


@pytest.mark.parametrize("name", SUITES.names())
def test_reference_answers_pass_and_empty_answers_fail(name):
    suite = SUITES.get(name)()
    run = RunSettings(limit=limit_for(suite), samples=2, ks=(1, 2))
    problems = suite_problems(suite, run)
    assert len({p.task_id for p in problems}) == len(problems), "task ids must be unique"
    result = run_suite(suite, suite.reference_ask(problems), run)
    failed = [(s.task_id, s.status, s.detail[-300:]) for s in result.samples if not s.passed]
    assert not failed, failed
    assert result.metrics["pass@1"] == 1.0 and result.metrics["pass@2"] == 1.0
    assert result.metrics["samples"] == 2 * len(problems)

    def silent(prompts, n, temperature, stop):
        return [[""] * n for _ in prompts]

    empty = run_suite(suite, silent, run)
    assert empty.metrics["pass@1"] == 0.0
    assert empty.metrics["empty_completions"] == 2 * len(problems)
    if suite.scoring == "yesno":
        assert empty.metrics["unparsed"] == 1.0


@pytest.mark.parametrize("name", SUITES.names())
def test_the_prompt_formats_differ_and_keep_the_problem(name):
    from fedpeft.evaluation.suites.base import PROMPT_FORMATS, format_prompt

    suite = SUITES.get(name)()
    problem = suite_problems(suite, RunSettings(limit=limit_for(suite)))[0]
    shown = {fmt: format_prompt(problem, fmt) for fmt in PROMPT_FORMATS}
    assert len(set(shown.values())) == len(PROMPT_FORMATS)
    assert shown["question-answer"].startswith(f"Question: {problem.instruction}\n\nAnswer:")
    assert "### Instruction:" in shown["alpaca"] and problem.instruction in shown["alpaca"]


def test_a_limit_above_the_suite_size_names_it():
    suite = SUITES.get("humaneval")()
    with pytest.raises(SuiteError, match=r"eval.suite_limit=165 for suite 'humaneval', which has 164 problems"):
        suite_problems(suite, RunSettings(limit=165))


def test_k_above_n_is_refused_before_anything_runs():
    calls = []

    def ask(prompts, n, temperature, stop):
        calls.append(prompts)
        return [[""] * n for _ in prompts]

    with pytest.raises(SuiteError, match=r"pass@5 needs n >= k"):
        run_suite(SUITES.get("humaneval")(), ask, RunSettings(limit=1, samples=2, ks=(1, 5)))
    assert not calls


def test_an_unknown_suite_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown eval.suites 'humaneva'; valid: .*humaneval, humaneval-explain"):
        SUITES.get("humaneva")


def test_grouped_scoring_takes_the_worst_variant_per_sample_index():
    """Two variants of one problem, three samples each: only index 0 passes both, so c = 1 of n = 3."""
    from fedpeft.evaluation.suites.base import Sample

    problems = [Problem(f"P/{v}", "", "", group="P") for v in range(2)] + [Problem("Q", "", "")]
    verdicts = {"P/0": [True, True, False], "P/1": [True, False, True], "Q": [False, False, True]}
    samples = [
        Sample(t, i, "", "x", ok, "passed" if ok else "failed") for t, vs in verdicts.items() for i, ok in enumerate(vs)
    ]
    metrics = score(Suite(), problems, samples, RunSettings(samples=3, ks=(1, 2)))
    assert metrics["problems"] == 2
    assert metrics["pass@1"] == pytest.approx((pass_at_k(3, 1, 1) + pass_at_k(3, 1, 1)) / 2)
    assert metrics["pass@2"] == pytest.approx((pass_at_k(3, 1, 2) + pass_at_k(3, 1, 2)) / 2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes, there is a bug.", True),
        ("No. The code is fine", False),
        ("yes", True),
        ("NO", False),
        ("Yes or no? Hard to say", None),
        ("The function is buggy: it returns early.", True),
        ("It is not buggy.", False),
        ("I think so", None),
        ("", None),
    ],
)
def test_yes_no_answers_are_read_as_astraios_reads_them(text, expected):
    assert answer_of(text) is expected


def test_cli_lists_the_suites_and_scores_the_reference_answers(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(app, ["suites"])
    assert listed.exit_code == 0
    for name in SUITES.names():
        assert name in listed.output
    out = tmp_path / "eval"
    result = runner.invoke(
        app, ["evaluate", "reference:canonical", "--suites", "humaneval", "--limit", "5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["reference-canonical"]["humaneval/pass@1"] == 1.0
    lines = (out / "reference-canonical" / "humaneval.jsonl").read_text().splitlines()
    assert [json.loads(line)["task_id"] for line in lines] == [f"HumanEval/{i}" for i in range(5)]
    assert all(json.loads(line)["status"] == "passed" for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suites", "nope"], "unknown eval.suites 'nope'; valid:"),
        (["--suites", "humaneval", "--limit", "999"], "eval.suite_limit=999 for suite 'humaneval', which has 164"),
        (["--suites", "humaneval", "--k", "1,10"], "pass@10 needs n >= k"),
        ([], "no suites to run: name them with --suites"),
        (
            ["--suites", "humaneval", "--suite-arg", "humaneval.x=1"],
            "eval.suite_args.humaneval has ['x'], which suite 'humaneval' does not take",
        ),
    ],
)
def test_cli_refuses_bad_input_with_a_clear_message(tmp_path, args, message):
    result = CliRunner().invoke(app, ["evaluate", "reference:canonical", *args, "--out", str(tmp_path / "e")])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_refuses_an_unknown_target(tmp_path):
    (tmp_path / "junk").mkdir()
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "junk"), "--suites", "humaneval"])
    assert result.exit_code == 2 and "is neither a run directory" in result.output
    result = runner.invoke(app, ["evaluate", "reference:other", "--suites", "humaneval"])
    assert result.exit_code == 2 and "valid: reference:canonical, reference:buggy" in result.output


def test_compare_tables_carry_each_suites_headline_figure():
    from fedpeft.experiment.compare import format_table, is_suite_score

    assert is_suite_score("humaneval/pass@1") and is_suite_score("defect-yesno/accuracy")
    assert not is_suite_score("humaneval/judge_seconds") and not is_suite_score("token_accuracy")
    row = {
        "strategy": "fedavg",
        "metric": "token_accuracy",
        "final": 0.5,
        "best": 0.5,
        "final_loss": 2.0,
        "client_val": None,
        "trainable": 10,
        "trainable_percent": 1.0,
        "megabytes_per_round": 0.1,
        "peak_rss_mb": 100.0,
        "seconds": 1.0,
    }
    table = format_table([row | {"suites": {"humaneval/pass@1": 0.25}}, row | {"strategy": "local", "suites": {}}])
    header, _, first, second = table.splitlines()
    assert header.endswith("| humaneval/pass@1 |")
    assert first.endswith("| 0.2500 |") and second.endswith("| nan |")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SUITES.names() if not n.startswith("recode-")])
def test_every_reference_answer_passes(name):
    """All problems, not the first few: HumanEval/56 and /61 share a function name, which once made two of
    humaneval-explain's reference prompts collide. (The ReCode families have their own slow test.)"""
    suite = SUITES.get(name)()
    problems = suite.problems(0)
    result = run_suite(suite, suite.reference_ask(problems), RunSettings())
    assert [s.task_id for s in result.samples if not s.passed] == []
