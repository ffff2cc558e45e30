"""ReCode's syntax family: semantics-preserving rewrites of the partial code (dead code, a renamed local
variable, ``for`` <-> ``while``, swapped operands).

Notable choices:
- Only the partial code is perturbed; a rename is carried through the rest of the program so it stays
  correct.
- Applicability is conservative: a transform returns ``None`` rather than risk changing behaviour (a
  ``for`` loop whose variable is read after the loop is not rewritten, operands with calls to anything but
  pure builtins are not swapped, a variable used in an f-string is not renamed).
"""

from __future__ import annotations

import ast

import numpy as np

from fedpeft.evaluation.recode.source import RESERVED, Change, Code, Transform, pick, snake_camel, statements, walk

PURE_CALLS = frozenset({"len", "abs", "min", "max", "sum", "sorted", "str", "int", "float", "ord", "chr", "bool"})
PURE_METHODS = frozenset({"lower", "upper", "strip", "isdigit", "isalpha", "isupper", "islower", "count"})
ATOMIC = (ast.Name, ast.Constant, ast.Attribute, ast.Subscript, ast.Call, ast.List, ast.Dict, ast.Set)
FLIPPED = {ast.Lt: ">", ast.LtE: ">=", ast.Gt: "<", ast.GtE: "<=", ast.Eq: "==", ast.NotEq: "!="}
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def dead_code(code: Code, rng: np.random.Generator) -> Change | None:
    """Insert a block that never runs (or an unused assignment) before a statement of the partial code."""
    places = [
        (code.starts[s.lineno - 1], code.indent_of(s.lineno))
        for s in statements(code)
        if code.body_start <= code.span(s)[0] < code.cut and id(s) not in code.in_fstrings
        if code.starts_line(s) and not getattr(s, "decorator_list", None)
    ]
    after = [s for s in statements(code) if code.span(s)[0] >= code.cut]
    if after:
        first = min(after, key=lambda s: code.span(s)[0])
        if code.starts_line(first) and not code.text[code.cut : code.span(first)[0]].strip():
            places.append((code.cut, code.indent_of(first.lineno)))
    if not places:
        return None
    at, ind = pick(rng, places)[0]
    name = code.fresh(str(rng.choice(["tmp", "unused", "dummy", "flag", "aux"])), rng)
    inner = ind + code.unit
    block = str(
        rng.choice(
            [
                f"if False:\n{inner}{name} = 0\n",
                f"while False:\n{inner}{name} = 1\n",
                f"for {name} in range(0):\n{inner}pass\n",
                f"{name} = None\n",
            ]
        )
    )
    return Change(
        ((at, at, ind + block),), f"dead_code: {block.splitlines()[0]!r} at line {code.text.count(chr(10), 0, at) + 1}"
    )


def _bound_in_scope(fn: ast.FunctionDef) -> set[str]:
    """Names the function's own scope binds with ``Name`` stores (not nested functions or comprehensions)."""
    out: set[str] = set()
    stack = list(fn.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            out.add(node.id)
        if isinstance(node, ast.NamedExpr):
            out.add(node.target.id)
        if not isinstance(node, (*SCOPES, *COMPREHENSIONS)):
            stack.extend(ast.iter_child_nodes(node))
    return out


def _blocked_names(fn: ast.FunctionDef) -> set[str]:
    """Names a rename cannot safely touch: parameters, keyword arguments, imports, except/global bindings."""
    out = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
    for node in ast.walk(fn):
        if isinstance(node, ast.arg | ast.keyword) and node.arg:
            out.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            out.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            out.update(node.names)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
    return out


VARIABLE_SYNONYMS = {
    name: others.split("|")
    for name, others in (
        pair.split(":")
        for pair in (
            "result:res|output|answer, res:result|out, ans:answer|result, i:idx|k|index, j:jdx|pos, "
            "count:cnt|total|counter, total:acc|summation, num:number|value, s:text|string_value, lst:items|seq, "
            "x:val|item, n:size|num_items, word:token|term, words:tokens|terms, ret:retval|result"
        ).split(", ")
    )
}
"""Other names a programmer might have given common variables."""


def rename_variable(code: Code, rng: np.random.Generator) -> Change | None:
    """Rename a local variable of the entry point (every reference, in the partial code and the rest)."""
    fn = code.function
    names = [n for n in ast.walk(fn) if isinstance(n, ast.Name)]
    blocked = _blocked_names(fn) | {code.entry}
    if any(isinstance(n, ast.ClassDef | ast.Lambda) for n in ast.walk(fn)):
        return None
    seen = {n.id for n in names if code.in_partial(n)}
    shadowed = {n.id for n in names if id(n) in code.in_fstrings}
    candidates = sorted((_bound_in_scope(fn) & seen) - blocked - shadowed)
    if not candidates:
        return None
    old = str(pick(rng, candidates)[0])
    options = [snake_camel(old), f"new_{old}", f"{old}_val", f"var_{int(rng.integers(0, 10))}"]
    options += VARIABLE_SYNONYMS.get(old, [])
    options = [o for o in options if o != old and o not in code.identifiers and o not in RESERVED]
    if not options:
        return None
    new = str(rng.choice(options))
    edits = tuple((*code.span(n), new) for n in names if n.id == old)
    return Change(edits, f"rename_variable: {old} -> {new}")


def _colon_after(code: Code, end: int) -> int | None:
    """The offset of the ``:`` that closes a compound statement's header whose last expression ends at
    ``end`` (skipping closing parentheses and whitespace)."""
    at = end
    while at < len(code.text) and code.text[at] in " \t)\\\n":
        at += 1
    return at if code.text.startswith(":", at) else None


def _is_const_int(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _is_const_int(node.operand)
        return None if inner is None else -inner
    return None


def _loop_owned(body: list[ast.stmt], kinds: tuple[type, ...]) -> bool:
    """Whether ``body`` holds a node of ``kinds`` that belongs to this loop (not to a nested loop or scope)."""
    stack: list[ast.AST] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, kinds):
            return True
        if not isinstance(node, (ast.For, ast.While, ast.AsyncFor, *SCOPES)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def _stable(expr: ast.AST, loop: ast.For) -> bool:
    """Whether ``expr`` (a ``range`` argument) has the same value at every iteration: constants and names the
    loop never stores, combined arithmetically, or ``len`` of a name the loop only reads by subscript."""
    stored = {n.id for n in ast.walk(loop) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    if isinstance(expr, ast.Constant):
        return True
    if isinstance(expr, ast.Name):
        return expr.id not in stored
    if isinstance(expr, ast.BinOp):
        return _stable(expr.left, loop) and _stable(expr.right, loop)
    if isinstance(expr, ast.UnaryOp):
        return _stable(expr.operand, loop)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "len" and not expr.keywords:
        if len(expr.args) != 1 or not isinstance(expr.args[0], ast.Name) or expr.args[0].id in stored:
            return False
        name = expr.args[0].id
        reads = {id(p.value) for p in ast.walk(loop) if isinstance(p, ast.Subscript) and isinstance(p.ctx, ast.Load)}
        reads |= {id(c.args[0]) for c in ast.walk(loop) if isinstance(c, ast.Call) and c.args and _is_len(c)}
        uses = [n for stmt in loop.body for n in ast.walk(stmt) if isinstance(n, ast.Name) and n.id == name]
        return all(id(n) in reads for n in uses)
    return False


def _is_len(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id == "len"


def _for_to_while(code: Code, loop: ast.For) -> Change | None:
    it, target = loop.iter, loop.target
    if loop.orelse or not isinstance(target, ast.Name) or loop.body[0].lineno == loop.lineno:
        return None
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range"):
        return None
    if it.keywords or not 1 <= len(it.args) <= 3 or _loop_owned(loop.body, (ast.Continue,)):
        return None
    start = it.args[0] if len(it.args) > 1 else None
    stop = it.args[1] if len(it.args) > 1 else it.args[0]
    stride = _is_const_int(it.args[2]) if len(it.args) == 3 else 1
    if not stride or not all(_stable(a, loop) for a in it.args):
        return None
    var = target.id
    if any(isinstance(n, ast.Name) and n.id == var for a in it.args for n in ast.walk(a)):
        return None
    inside = {id(n) for n in ast.walk(loop)}
    if any(isinstance(n, ast.Name) and n.id == var and id(n) not in inside for n in ast.walk(code.function)):
        return None
    colon = _colon_after(code, code.span(it)[1])
    if colon is None:
        return None
    line = code.starts[loop.lineno - 1]
    ind, body_ind = code.indent_of(loop.lineno), code.indent_of(loop.body[0].lineno)
    after_body = code.starts[loop.body[-1].end_lineno]
    bump = f"{var} += {stride}" if stride > 0 else f"{var} -= {-stride}"
    edits = (
        (line, line, f"{ind}{var} = {'0' if start is None else code.segment(start)}\n"),
        (code.span(loop)[0], colon, f"while {var} {'<' if stride > 0 else '>'} {code.segment(stop)}"),
        (after_body, after_body, f"{body_ind}{bump}\n"),
    )
    return Change(edits, f"for_while: for {var} in range(...) -> while, line {loop.lineno}")


def _while_to_for(code: Code, loop: ast.While, rng: np.random.Generator) -> Change | None:
    if loop.orelse or loop.body[0].lineno == loop.lineno:
        return None
    colon = _colon_after(code, code.span(loop.test)[1])
    if colon is None:
        return None
    counter = "_" if "_" not in code.identifiers else code.fresh("_loop", rng)
    body_ind = code.indent_of(loop.body[0].lineno)
    test = code.segment(loop.test)
    cond = test if isinstance(loop.test, ATOMIC) else f"({test})"
    at = code.starts[loop.body[0].lineno - 1]
    edits = (
        (code.span(loop)[0], colon, f"for {counter} in iter(int, 1)"),
        (at, at, f"{body_ind}if not {cond}:\n{body_ind}{code.unit}break\n"),
    )
    return Change(edits, f"for_while: while -> for {counter} in iter(int, 1), line {loop.lineno}")


def for_while(code: Code, rng: np.random.Generator) -> Change | None:
    """Rewrite a loop of the partial code: ``for v in range(...)`` as a counting ``while``, or ``while c`` as
    ``for _ in iter(int, 1)`` that breaks when ``c`` fails."""
    changes = []
    for loop in statements(code):
        if not isinstance(loop, ast.For | ast.While) or not code.starts_line(loop):
            continue
        header_end = code.span(loop.iter if isinstance(loop, ast.For) else loop.test)[1]
        if not (code.body_start <= code.span(loop)[0] and header_end < code.cut):
            continue
        change = _for_to_while(code, loop) if isinstance(loop, ast.For) else _while_to_for(code, loop, rng)
        if change and all(not (s < code.cut < e) for s, e, _ in change.edits):
            changes.append(change)
    return pick(rng, changes)[0] if changes else None


def _pure(node: ast.AST) -> bool:
    """Whether evaluating ``node`` has no side effects (so operands can be evaluated in the other order)."""
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            func = n.func
            if isinstance(func, ast.Name) and func.id in PURE_CALLS:
                continue
            if isinstance(func, ast.Attribute) and func.attr in PURE_METHODS:
                continue
            return False
        if isinstance(n, (ast.NamedExpr, ast.Yield, ast.YieldFrom, ast.Await, ast.Lambda, *COMPREHENSIONS)):
            return False
    return True


def _operand(code: Code, node: ast.AST, bare: tuple[type, ...]) -> str:
    text = code.segment(node)
    plain = isinstance(node, ATOMIC) or isinstance(node, bare) or _unary(node)
    return text if plain else f"({text})"


def _unary(node: ast.AST) -> bool:
    return isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.Not)


def operand_swap(code: Code, rng: np.random.Generator) -> Change | None:
    """Swap the operands of a comparison (flipping it: ``a < b`` -> ``b > a``) or of a commutative ``*`` (or
    ``+`` with a number), where both operands are free of side effects."""
    changes = []
    for node in walk(code.function):
        if not code.in_partial(node):
            continue
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in FLIPPED:
            left, right, op, bare = node.left, node.comparators[0], FLIPPED[type(node.ops[0])], (ast.BinOp,)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            left, right, op, bare = node.left, node.right, "*", ()
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and _number(node.left) != _number(node.right):
            left, right, op, bare = node.left, node.right, "+", ()
        else:
            continue
        if _pure(left) and _pure(right) and "\n" not in code.segment(node):
            swapped = f"{_operand(code, right, bare)} {op} {_operand(code, left, bare)}"
            changes.append(Change(((*code.span(node), swapped),), f"operand_swap: {code.segment(node)} -> {swapped}"))
    return pick(rng, changes)[0] if changes else None


def _number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


SYNTAX: dict[str, Transform] = {
    "dead_code": dead_code,
    "rename_variable": rename_variable,
    "for_while": for_while,
    "operand_swap": operand_swap,
}
