"""Bug injection: each mutation kind on hand-written functions, with exact expected output."""

import ast
from collections import Counter

import numpy as np
import pytest

from fedpeft.data import defects
from fedpeft.data.defects import MUTATIONS, defect_example, inject_bug, normalize_code
from fedpeft.data.text_tasks import defect_rows


def only(kind, monkeypatch):
    """Restrict injection to one mutation kind."""
    monkeypatch.setattr(defects, "MUTATIONS", (kind,))


@pytest.mark.parametrize(
    ("kind", "code", "expected"),
    [
        ("swap_comparison", "def f(a, b):\n    return a < b", "def f(a, b):\n    return a > b"),
        ("drop_not", "def f(a):\n    return not a", "def f(a):\n    return a"),
        ("swap_arguments", "def f(a, b):\n    return g(a, b)", "def f(a, b):\n    return g(b, a)"),
        ("wrong_variable", "def f(a, b):\n    return b", "def f(a, b):\n    return a"),
    ],
)
def test_each_mutation_kind(kind, code, expected, monkeypatch):
    only(kind, monkeypatch)
    assert inject_bug(code, np.random.default_rng(0)) == (expected, kind)


@pytest.mark.parametrize(
    ("code", "choices"),
    [
        ("def f(n):\n    return range(n)", {"range(n + 1)", "range(n - 1)"}),
        ("def f(s, n):\n    return s[:n]", {"s[:n + 1]", "s[:n - 1]"}),
    ],
)
def test_off_by_one_in_range_and_slice(code, choices, monkeypatch):
    only("off_by_one", monkeypatch)
    mutated, kind = inject_bug(code, np.random.default_rng(0))
    assert kind == "off_by_one" and any(c in mutated for c in choices)


def test_no_applicable_site_gives_none_and_results_parse():
    assert inject_bug("def f():\n    pass", np.random.default_rng(0)) is None
    code = "def f(xs, n):\n    # sum the first n\n    total = 0\n    for i in range(n):\n        if not xs[i] < 0:\n            total = add(total, xs[i])\n    return total"
    for seed in range(30):
        mutated, kind = inject_bug(code, np.random.default_rng(seed))
        assert kind in MUTATIONS and mutated != normalize_code(code)
        ast.parse(mutated)


def test_both_classes_are_normalised_so_formatting_does_not_leak_the_label():
    code = "def f(a, b):   # compare\n    return (a <  b)"
    texts = {defect_example(code, np.random.default_rng(s))[:2] for s in range(20)}
    assert {label for _, label in texts} == {0, 1}
    assert all("#" not in text and "  b" not in text for text, _ in texts)


def test_defect_rows_are_balanced_and_stable(tmp_path):
    from fedpeft.data.stdlib_corpus import harvest
    from tests.unit.test_corpus import make_stdlib

    make_stdlib(tmp_path)
    rows = defect_rows(harvest(tmp_path))
    assert rows == defect_rows(harvest(tmp_path))
    from fedpeft.data.stdlib_corpus import load_stdlib_corpus

    real = defect_rows(load_stdlib_corpus(["json", "email", "csv", "argparse", "logging"]))
    labels = Counter(r.label for r in real)
    assert 0.4 < labels[1] / len(real) < 0.6
    assert {r.kind for r in real if r.label == 1} <= set(MUTATIONS)
