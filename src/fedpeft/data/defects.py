"""Offline defect detection: realistic single-site bugs injected into real stdlib functions.

Notable choices:
- Five mutation kinds, each a small edit a programmer makes by mistake: a swapped comparison operator,
  an off-by-one in a ``range`` stop or a slice bound, a wrong (but defined) local variable, a dropped
  ``not``, swapped call arguments. One site is chosen at random among all that apply.
- Both classes go through ``ast.unparse``: buggy code is unparsed after the edit, so originals are
  unparsed too; otherwise formatting and comments alone would give the label away.
- Each function yields one example (clean or buggy, by a coin flip seeded per function), so no function
  is in two splits and the model never sees a clean/buggy pair to diff.
"""

from __future__ import annotations

import ast
import copy

import numpy as np

MUTATIONS = ("swap_comparison", "off_by_one", "wrong_variable", "drop_not", "swap_arguments")

_SWAPPED_OP: dict[type, type] = {
    ast.Lt: ast.Gt,
    ast.Gt: ast.Lt,
    ast.LtE: ast.GtE,
    ast.GtE: ast.LtE,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}


def parses(code: str) -> bool:
    """Whether ``code`` parses alone (a few harvested functions do not: a multi-line string literal less
    indented than the body defeats dedenting)."""
    try:
        ast.parse(code)
    except SyntaxError:
        return False
    return True


def normalize_code(code: str) -> str:
    """The code as ``ast.unparse`` writes it (no comments, canonical spacing)."""
    return ast.unparse(ast.parse(code))


def _local_names(func: ast.AST) -> list[str]:
    names = set()
    for node in ast.walk(func):
        if isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    names.discard("self")
    names.discard("cls")
    return sorted(names)


def _sites(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """Every (mutation, node) pair that can be applied in ``tree``."""
    local = _local_names(tree)
    sites: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _SWAPPED_OP:
            sites.append(("swap_comparison", node))
        elif isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "range" and node.args and not node.keywords:
                sites.append(("off_by_one", node))
            positional = [a for a in node.args if not isinstance(a, ast.Starred)]
            if len(positional) == len(node.args) >= 2 and ast.dump(node.args[0]) != ast.dump(node.args[1]):
                sites.append(("swap_arguments", node))
        elif isinstance(node, ast.Slice) and node.upper is not None:
            sites.append(("off_by_one", node))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append(("drop_not", node))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in local and len(local) >= 2:
            sites.append(("wrong_variable", node))
    return sites


def _plus_or_minus_one(expr: ast.expr, rng: np.random.Generator) -> ast.expr:
    op = ast.Add() if rng.random() < 0.5 else ast.Sub()
    return ast.BinOp(left=expr, op=op, right=ast.Constant(1))


def _apply(kind: str, node: ast.AST, tree: ast.AST, rng: np.random.Generator) -> None:
    if kind == "swap_comparison":
        node.ops = [_SWAPPED_OP[type(node.ops[0])]()]
    elif kind == "off_by_one" and isinstance(node, ast.Call):
        stop = 1 if len(node.args) >= 2 else 0
        node.args[stop] = _plus_or_minus_one(node.args[stop], rng)
    elif kind == "off_by_one":
        node.upper = _plus_or_minus_one(node.upper, rng)
    elif kind == "swap_arguments":
        node.args[0], node.args[1] = node.args[1], node.args[0]
    elif kind == "wrong_variable":
        others = [n for n in _local_names(tree) if n != node.id]
        node.id = others[int(rng.integers(len(others)))]
    elif kind == "drop_not":
        _replace(tree, node, node.operand)


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
                return
            if isinstance(value, list) and any(v is old for v in value):
                value[[i for i, v in enumerate(value) if v is old][0]] = new
                return


def inject_bug(code: str, rng: np.random.Generator) -> tuple[str, str] | None:
    """(normalized buggy code, mutation kind), or None when no mutation applies to ``code``.

    The kind is drawn uniformly among the kinds that apply, then one of its sites, so that the common
    edit (a variable reference) does not crowd out the rare ones (an off-by-one)."""
    tree = ast.parse(code)
    original = ast.unparse(tree)
    by_kind: dict[str, list[int]] = {}
    for i, (kind, _) in enumerate(_sites(tree)):
        by_kind.setdefault(kind, []).append(i)
    kinds = [k for k in MUTATIONS if k in by_kind]
    for kind in (kinds[i] for i in rng.permutation(len(kinds))):
        for pick in rng.permutation(by_kind[kind]):
            candidate = copy.deepcopy(tree)
            _, node = _sites(candidate)[pick]
            _apply(kind, node, candidate, rng)
            mutated = ast.unparse(ast.fix_missing_locations(candidate))
            if mutated != original:
                return mutated, kind
    return None


def defect_example(code: str, rng: np.random.Generator) -> tuple[str, int, str] | None:
    """(normalized code, label 1 = buggy / 0 = clean, mutation or 'clean') by a fair coin, or None for a
    function that does not parse alone or that no mutation applies to (kept out so labels stay balanced)."""
    if not parses(code):
        return None
    bug = inject_bug(code, rng)
    if bug is None:
        return None
    if rng.random() < 0.5:
        return bug[0], 1, bug[1]
    return normalize_code(code), 0, "clean"
