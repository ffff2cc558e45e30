"""Offline clone detection: pairs of functions that do the same thing written differently, and pairs of
different functions.

Notable choices:
- Positives are a function and a semantics-preserving rewrite of it: consistent renaming of its local
  variables, swapping two adjacent independent assignments, flipping comparisons (``a < b`` to
  ``b > a``) and swapping an ``if``/``else`` under a negated test. Each rewrite applies at least one.
- Negatives pair a function with a different function of the same module when there is one (harder
  than a random module, where vocabulary alone would tell them apart).
- Both sides of every pair go through ``ast.unparse``, so formatting never gives the label away.
"""

from __future__ import annotations

import ast
import copy

import numpy as np

from fedpeft.data.defects import normalize_code, parses

# Ordinary local names: renamed code must read like code, or the names alone would mark the positives.
NAME_POOL = (
    "result value item data buf tmp count index node key name text parts line size out acc res elem obj "
    "entry chunk part pos start end total found current other rest head tail args prefix suffix path"
).split()
_FLIPPED = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq}


def _locals_to_rename(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """Names assigned in the body (not arguments, which callers may pass by keyword; not globals)."""
    declared = {n for node in ast.walk(func) if isinstance(node, (ast.Global, ast.Nonlocal)) for n in node.names}
    declared |= {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)}  # `x = int(x)` keeps its parameter
    stored = {
        node.id
        for node in ast.walk(func)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id not in declared
    }
    # Lambdas, nested defs and classes bind parameters (ast.arg) that renaming would miss.
    scopes = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
    nested = any(isinstance(n, scopes) for n in ast.walk(func) if n is not func)
    return [] if nested else sorted(stored)


def _rename_locals(func, rng: np.random.Generator) -> bool:
    names = _locals_to_rename(func)
    if not names:
        return False
    taken = {n.id for n in ast.walk(func) if isinstance(n, ast.Name)} | {
        a.arg for a in ast.walk(func) if isinstance(a, ast.arg)
    }
    free = [n for n in NAME_POOL if n not in taken]
    if len(free) < len(names):
        return False
    picks = rng.permutation(len(free))[: len(names)]
    mapping = {name: free[p] for name, p in zip(names, picks, strict=True)}
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and node.id in mapping:
            node.id = mapping[node.id]
    return True


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _independent(a: ast.stmt, b: ast.stmt) -> bool:
    """Two simple assignments of plain names with no name in common and no calls (which could have
    side effects on each other)."""
    simple = all(
        isinstance(s, ast.Assign) and all(isinstance(t, ast.Name) for t in s.targets) for s in (a, b)
    ) and not any(isinstance(n, ast.Call) for s in (a, b) for n in ast.walk(s))
    return simple and not (_names(a) & _names(b))


def _reorder_statements(func, rng: np.random.Generator) -> bool:
    blocks = [n.body for n in ast.walk(func) if hasattr(n, "body") and isinstance(n.body, list)]
    sites = [(body, i) for body in blocks for i in range(len(body) - 1) if _independent(body[i], body[i + 1])]
    if not sites:
        return False
    body, i = sites[int(rng.integers(len(sites)))]
    body[i], body[i + 1] = body[i + 1], body[i]
    return True


def _flip_comparisons(func, rng: np.random.Generator) -> bool:
    sites = [n for n in ast.walk(func) if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _FLIPPED]
    for node in sites:
        node.left, node.comparators = node.comparators[0], [node.left]
        node.ops = [_FLIPPED[type(node.ops[0])]()]
    return bool(sites)


def _swap_if_else(func, rng: np.random.Generator) -> bool:
    sites = [n for n in ast.walk(func) if isinstance(n, ast.If) and n.orelse and not isinstance(n.orelse[0], ast.If)]
    if not sites:
        return False
    node = sites[int(rng.integers(len(sites)))]
    node.test = (
        node.test.operand
        if isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)
        else (ast.UnaryOp(op=ast.Not(), operand=node.test))
    )
    node.body, node.orelse = node.orelse, node.body
    return True


REWRITES = (_rename_locals, _reorder_statements, _flip_comparisons, _swap_if_else)


def rewrite_clone(code: str, rng: np.random.Generator) -> str | None:
    """A semantics-preserving rewrite of ``code`` (normalized), or None if no rewrite applies."""
    if not parses(code):
        return None
    tree = ast.parse(code)
    if not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    func = copy.deepcopy(tree.body[0])
    applied = [rewrite(func, rng) for rewrite in REWRITES if rng.random() < 0.75]
    if not any(applied):
        applied = [rewrite(func, rng) for rewrite in REWRITES]
    rewritten = ast.unparse(ast.fix_missing_locations(func))
    return rewritten if any(applied) and rewritten != normalize_code(code) else None
