"""Clone rewrites keep behaviour (checked by running both versions) and read like ordinary code."""

import ast
from collections import Counter

import numpy as np
import pytest
import torch

from fedpeft.data.clones import NAME_POOL, rewrite_clone
from fedpeft.evaluation.metrics import best_f1_threshold

FUNCTIONS = {
    "clip": (
        "def clip(xs, low, high):\n    out = []\n    for x in xs:\n        if x < low:\n            out.append(low)\n"
        "        elif not x <= high:\n            out.append(high)\n        else:\n            out.append(x)\n    return out",
        [([1, 5, 9, -2], 0, 6), ([], 1, 2), ([3, 3], 3, 3)],
    ),
    "stats": (
        "def stats(xs):\n    total = 0\n    count = 0\n    for x in xs:\n        total = total + x\n        count = count + 1\n"
        "    mean = total / count if count != 0 else 0\n    return (total, count, mean)",
        [([1, 2, 3],), ([],), ([5],)],
    ),
    "pick": (
        "def pick(a, b):\n    first = a * 2\n    second = b + 1\n    if first >= second:\n        winner = first\n"
        "    else:\n        winner = second\n    return winner",
        [(1, 5), (4, 1), (3, 6)],
    ),
}


def run(code, name, args):
    namespace = {}
    exec(compile(code, "<clone>", "exec"), namespace)
    return namespace[name](*args)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_rewrites_behave_like_the_original(name):
    code, inputs = FUNCTIONS[name]
    seen = set()
    for seed in range(25):
        rewritten = rewrite_clone(code, np.random.default_rng(seed))
        assert rewritten is not None and rewritten != ast.unparse(ast.parse(code))
        seen.add(rewritten)
        for args in inputs:
            assert run(rewritten, name, [list(a) if isinstance(a, list) else a for a in args]) == run(code, name, args)
    assert len(seen) > 3  # different seeds give different rewrites


def test_renamed_locals_are_ordinary_names_and_arguments_keep_theirs():
    rewritten = rewrite_clone(FUNCTIONS["stats"][0], np.random.default_rng(0))
    func = ast.parse(rewritten).body[0]
    assert [a.arg for a in func.args.args] == ["xs"]
    stored = {n.id for n in ast.walk(func) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    assert stored <= set(NAME_POOL) | {"total", "count", "x", "mean"}


def test_no_rewrite_for_a_function_with_nothing_to_change():
    assert rewrite_clone("def f():\n    return 1", np.random.default_rng(0)) is None


def test_clone_rows_are_balanced_and_never_cross_splits_or_modules():
    from fedpeft.data.stdlib_corpus import load_stdlib_corpus
    from fedpeft.data.text_tasks import clone_rows

    records = load_stdlib_corpus(["json", "email", "csv", "argparse", "logging", "http"])
    rows = clone_rows(records)
    assert rows == clone_rows(records)
    labels = Counter(r.label for r in rows)
    assert 0.4 < labels[1] / len(rows) < 0.6
    by_code = {ast.unparse(ast.parse(r.code)): r for r in records if r.code}
    for row in rows[:200]:
        sides = [by_code.get(row.text), by_code.get(row.text_b)]
        known = [s for s in sides if s is not None]
        assert all(s.module == row.category for s in known)


def test_best_f1_threshold_by_hand():
    # Thresholds 0.1, 0.35, 0.4, 0.8 give F1 2/3, 0.8, 0.5, 2/3.
    assert best_f1_threshold([0, 0, 1, 1], torch.tensor([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.35)


def test_functions_with_a_lambda_keep_their_names():
    code = "def f(xs):\n    for item in xs:\n        pass\n    return sorted(xs, key=lambda item: item.k)"
    for seed in range(10):
        rewritten = rewrite_clone(code, np.random.default_rng(seed))
        assert rewritten is None or "lambda item: item.k" in rewritten


def test_a_parameter_reassigned_in_the_body_is_not_renamed():
    """`other = convert(other)` renamed to `pos = convert(pos)` reads a local before it is set: the "clone"
    was not equivalent (a quarter of clone-yesno's positive pairs were like this)."""
    import numpy as np

    code = "def f(x, scale=2):\n    x = x + 1\n    y = x * scale\n    return y\n"
    for seed in range(20):
        clone = rewrite_clone(code, np.random.default_rng(seed))
        if clone is None:
            continue
        original, rewritten = {}, {}
        exec(code, original)  # noqa: S102 - our own fixed function, not generated code
        exec(clone, rewritten)  # noqa: S102
        assert rewritten["f"](3) == original["f"](3) == 8, clone
        assert rewritten["f"](x=1, scale=5) == 10, clone
