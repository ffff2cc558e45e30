"""Semantics-preserving code perturbations for the ReCode suites (Wang et al., 2022): the source model, the
edit machinery, and the ``format`` and ``syntax`` families.

A HumanEval problem is held as one program, prompt + canonical solution, with a *cut*: the offset where the
prompt ends. A perturbation is a list of text edits at positions found with ``ast`` and ``tokenize``; after
the edits, the program is split again at the moved cut, so the variant's prompt is the perturbed partial
code and its canonical completion is the rest of the same, consistently perturbed program.

Notable choices:
- Edits, never ``ast.unparse``: everything a perturbation does not touch (docstrings, comments, quoting,
  layout) stays byte for byte. ``ast`` column offsets are UTF-8 byte offsets; :class:`Code` converts them.
- ReCode's partial code: the prompt plus the first half of the canonical solution's non-blank lines, cut at
  the end of a logical line (:func:`partial_cut`). Format and syntax perturbations only touch that partial
  code (a rename or an indentation change is carried through the rest so the program stays correct).
- Applicability is conservative: a transform returns ``None`` rather than risk changing behaviour (a
  ``for`` loop whose variable is read after the loop is not rewritten, operands with calls to anything but
  pure builtins are not swapped, a variable used in an f-string is not renamed).
- Every random choice comes from the ``numpy`` generator passed in; a transform is deterministic for it.
"""

from __future__ import annotations

import ast
import builtins
import io
import keyword
import re
import tokenize
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

Edit = tuple[int, int, str]
"""Replace ``text[start:end]`` with the string (``start == end``: insert)."""


@dataclass(frozen=True)
class Change:
    """What one perturbation does: its edits, a description for ``Problem.meta``, and a new entry point name
    when it renames the function under test."""

    edits: tuple[Edit, ...]
    what: str
    entry: str | None = None


Transform = Callable[["Code", np.random.Generator], "Change | None"]

RESERVED = frozenset(keyword.kwlist) | frozenset(dir(builtins))
PURE_CALLS = frozenset({"len", "abs", "min", "max", "sum", "sorted", "str", "int", "float", "ord", "chr", "bool"})
PURE_METHODS = frozenset({"lower", "upper", "strip", "isdigit", "isalpha", "isupper", "islower", "count"})
ATOMIC = (ast.Name, ast.Constant, ast.Attribute, ast.Subscript, ast.Call, ast.List, ast.Dict, ast.Set)
FLIPPED = {ast.Lt: ">", ast.LtE: ">=", ast.Gt: "<", ast.GtE: "<=", ast.Eq: "==", ast.NotEq: "!="}
SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
SKIPPED = (tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT)


class Code:
    """A program (prompt + canonical), the offset ``cut`` where its prompt ends, and its entry point."""

    def __init__(self, text: str, cut: int, entry: str):
        self.text = text if text.endswith("\n") else text + "\n"
        self.cut = cut
        self.entry = entry
        self.tree = ast.parse(self.text)
        self.lines = self.text.split("\n")
        self.starts = [0]
        for line in self.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line) + 1)

    def offset(self, lineno: int, col: int) -> int:
        """The text offset of an ``ast`` position (``col`` in UTF-8 bytes)."""
        return self.starts[lineno - 1] + len(self.lines[lineno - 1].encode()[:col].decode())

    def span(self, node: ast.AST) -> tuple[int, int]:
        return self.offset(node.lineno, node.col_offset), self.offset(node.end_lineno, node.end_col_offset)

    def segment(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.text[start:end]

    def indent_of(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        return line[: len(line) - len(line.lstrip())]

    def starts_line(self, node: ast.AST) -> bool:
        """Whether the node is the first thing on its line (and not an ``elif``, whose ``If`` starts there)."""
        start = self.offset(node.lineno, node.col_offset)
        head = self.text[self.starts[node.lineno - 1] : start]
        return not head.strip() and not self.text.startswith("elif", start)

    @cached_property
    def function(self) -> ast.FunctionDef:
        defs = [n for n in self.tree.body if isinstance(n, ast.FunctionDef) and n.name == self.entry]
        if not defs:
            raise ValueError(f"the program defines no function {self.entry!r}")
        return defs[-1]

    @cached_property
    def docstring(self) -> ast.Expr | None:
        """The entry point's description: the first string statement of its body in the prompt (HumanEval/115
        puts an import before it)."""
        for stmt in self.function.body:
            if self.span(stmt)[0] >= self.cut:
                break
            if (
                isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            ):
                return stmt
        return None

    @cached_property
    def body_start(self) -> int:
        """Where the entry point's code starts: after its docstring (or its signature)."""
        anchor = self.docstring or self.function.body[0]
        return self.span(anchor)[1] if self.docstring else self.span(anchor)[0]

    @cached_property
    def unit(self) -> str:
        """One level of indentation, as the entry point's body uses it."""
        outer = self.indent_of(self.function.lineno)
        inner = self.indent_of(self.function.body[0].lineno)
        return inner[len(outer) :] if inner.startswith(outer) and len(inner) > len(outer) else "    "

    @cached_property
    def identifiers(self) -> frozenset[str]:
        """Every word of the program, strings and comments included (a fresh name must avoid them all)."""
        return frozenset(re.findall(r"[A-Za-z_]\w*", self.text))

    @cached_property
    def names(self) -> frozenset[str]:
        """The names the code uses: variables, parameters, attributes, functions, imports, keywords."""
        out = set()
        for n in ast.walk(self.tree):
            for attr in ("id", "arg", "attr", "name", "asname"):
                value = getattr(n, attr, None)
                if isinstance(value, str):
                    out.update(value.split("."))
        return frozenset(out)

    @cached_property
    def in_fstrings(self) -> frozenset[int]:
        """``id`` of every node inside an f-string (their positions are not trusted)."""
        return frozenset(
            id(inner) for n in ast.walk(self.tree) if isinstance(n, ast.JoinedStr) for inner in ast.walk(n)
        )

    @cached_property
    def tokens(self) -> list[tokenize.TokenInfo]:
        return list(tokenize.generate_tokens(io.StringIO(self.text).readline))

    def tok_offset(self, row: int, col: int) -> int:
        return self.starts[row - 1] + col

    def in_partial(self, node: ast.AST) -> bool:
        """Whether the node lies wholly in the partial code after the docstring (what the model sees)."""
        if getattr(node, "end_lineno", None) is None:
            return False
        start, end = self.span(node)
        return self.body_start <= start and end <= self.cut and id(node) not in self.in_fstrings

    def fresh(self, stem: str, rng: np.random.Generator) -> str:
        """A name not used anywhere in the program, built on ``stem``."""
        name = stem
        while name in self.identifiers or name in RESERVED:
            name = f"{stem}_{int(rng.integers(1, 10))}" if name == stem else f"{stem}{int(rng.integers(10, 100))}"
        return name


def apply_edits(text: str, cut: int, edits: tuple[Edit, ...] | list[Edit]) -> tuple[str, int]:
    """``text`` with ``edits`` made, and where ``cut`` is after them (an insertion at the cut goes before it)."""
    out, at, new_cut = [], 0, cut
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1])):
        if start < at:
            raise ValueError(f"overlapping edits at offset {start}")
        if start < cut < end:
            raise ValueError(f"an edit at {start}..{end} straddles the end of the prompt ({cut})")
        out += [text[at:start], new]
        at = end
        if end <= cut:
            new_cut += len(new) - (end - start)
    out.append(text[at:])
    return "".join(out), new_cut


def partial_cut(prompt: str, canonical: str) -> int:
    """ReCode's partial code ends after the last logical line that keeps it within the first half of the
    canonical solution's non-blank lines (the prompt alone when the first statement is already past it)."""
    code = Code(prompt + canonical, len(prompt), "")
    half = sum(1 for line in canonical.split("\n") if line.strip()) // 2
    best = len(prompt)
    for tok in code.tokens:
        if tok.type != tokenize.NEWLINE or not tok.string:
            continue
        end = code.starts[tok.end[0]] if tok.end[0] < len(code.starts) else len(code.text)
        if end <= len(prompt):
            continue
        if sum(1 for line in code.text[len(prompt) : end].split("\n") if line.strip()) > half:
            break
        best = end
    return best


def _pick(rng: np.random.Generator, items: list, k: int = 1) -> list:
    """``k`` distinct items in their original order."""
    chosen = sorted(rng.choice(len(items), size=min(k, len(items)), replace=False).tolist())
    return [items[i] for i in chosen]


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` (itself excluded) in source order."""
    for child in ast.iter_child_nodes(node):
        yield child
        yield from _walk(child)


def _statements(code: Code) -> list[ast.stmt]:
    return [n for n in _walk(code.function) if isinstance(n, ast.stmt) and n is not code.docstring]


# ---------------------------------------------------------------------------------------------- syntax


def dead_code(code: Code, rng: np.random.Generator) -> Change | None:
    """Insert a block that never runs (or an unused assignment) before a statement of the partial code."""
    places = [
        (code.starts[s.lineno - 1], code.indent_of(s.lineno))
        for s in _statements(code)
        if code.body_start <= code.span(s)[0] < code.cut and id(s) not in code.in_fstrings
        if code.starts_line(s) and not getattr(s, "decorator_list", None)
    ]
    after = [s for s in _statements(code) if code.span(s)[0] >= code.cut]
    if after:
        first = min(after, key=lambda s: code.span(s)[0])
        if code.starts_line(first) and not code.text[code.cut : code.span(first)[0]].strip():
            places.append((code.cut, code.indent_of(first.lineno)))
    if not places:
        return None
    at, ind = _pick(rng, places)[0]
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


def snake_camel(name: str) -> str:
    """``snake_case`` <-> ``camelCase`` (the name itself when it is neither)."""
    if "_" in name.strip("_"):
        head, *rest = name.strip("_").split("_")
        return head + "".join(part[:1].upper() + part[1:] for part in rest if part)
    if re.search(r"[a-z][A-Z]", name):
        return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)
    return name


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
    old = str(_pick(rng, candidates)[0])
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
    for loop in _statements(code):
        if not isinstance(loop, ast.For | ast.While) or not code.starts_line(loop):
            continue
        header_end = code.span(loop.iter if isinstance(loop, ast.For) else loop.test)[1]
        if not (code.body_start <= code.span(loop)[0] and header_end < code.cut):
            continue
        change = _for_to_while(code, loop) if isinstance(loop, ast.For) else _while_to_for(code, loop, rng)
        if change and all(not (s < code.cut < e) for s, e, _ in change.edits):
            changes.append(change)
    return _pick(rng, changes)[0] if changes else None


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
    for node in _walk(code.function):
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
    return _pick(rng, changes)[0] if changes else None


def _number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


# ---------------------------------------------------------------------------------------------- format


def _logical_ends(code: Code) -> list[int]:
    """Offsets just after each logical line of the entry point's partial code."""
    begin = code.span(code.function)[0]
    ends = []
    for tok in code.tokens:
        if tok.type == tokenize.NEWLINE and tok.string:
            end = code.starts[tok.end[0]] if tok.end[0] < len(code.starts) else len(code.text)
            if begin < end <= code.cut:
                ends.append(end)
    return ends


def newline_insert(code: Code, rng: np.random.Generator) -> Change | None:
    """Insert one to three empty lines after logical lines of the partial code."""
    ends = _logical_ends(code)
    if not ends:
        return None
    chosen = _pick(rng, ends, int(rng.integers(1, 4)))
    lines = [code.text.count("\n", 0, at) for at in chosen]
    return Change(tuple((at, at, "\n") for at in chosen), f"newline_insert: after lines {lines}")


def newline_remove(code: Code, rng: np.random.Generator) -> Change | None:
    """Remove a line break between statements of the partial code: an empty line goes, or two adjacent
    one-line simple statements of one block are joined with ``;``."""
    options: list[tuple[Edit, str]] = []
    strings = {
        row
        for n in ast.walk(code.tree)
        if isinstance(n, ast.Constant | ast.JoinedStr)
        for row in range(n.lineno - 1, n.end_lineno)
    }
    for row in range(code.text.count("\n", 0, code.body_start) + 1, code.text.count("\n", 0, code.cut)):
        if not code.lines[row].strip() and code.lines[row - 1].strip() and row not in strings:
            options.append(((code.starts[row], code.starts[row + 1], ""), f"empty line {row + 1}"))
    for block in (getattr(n, f, None) for n in ast.walk(code.function) for f in ("body", "orelse", "finalbody")):
        if not isinstance(block, list):
            continue
        for a, b in zip(block, block[1:], strict=False):
            simple = not any(isinstance(s, ast.stmt) and hasattr(s, "body") for s in (a, b))
            if not simple or a is code.docstring or not code.in_partial(b) or not code.in_partial(a):
                continue
            a_end, b_start = code.span(a)[1], code.span(b)[0]
            one_line = a.lineno == a.end_lineno and b.lineno == b.end_lineno == a.lineno + 1
            if one_line and code.starts_line(b) and not code.text[a_end:b_start].strip():
                options.append(((a_end, b_start, "; "), f"joined lines {a.lineno} and {b.lineno}"))
    if not options:
        return None
    edit, what = _pick(rng, options)[0]
    return Change((edit,), f"newline_remove: {what}")


SPLIT_AFTER = frozenset({",", "=", "+", "-", "*", "/", "//", "%", "==", "!=", "<", ">", "<=", ">=", "+=", "-=", "("})
SPLIT_BEFORE = frozenset({"and", "or", "if", "else", "for", "in"})


def line_split(code: Code, rng: np.random.Generator) -> Change | None:
    """Split a line of the partial code in two: inside brackets with a plain line break, else with ``\\``."""
    begin = code.body_start if code.body_start < code.cut else code.span(code.function)[0]
    options, depth = [], 0
    for tok, nxt in zip(code.tokens, code.tokens[1:], strict=False):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        at = code.tok_offset(*tok.end)
        if tok.end[0] != nxt.start[0] or not begin <= at < code.cut or nxt.type in (tokenize.COMMENT, tokenize.NEWLINE):
            continue
        after = tok.type == tokenize.OP and tok.string in SPLIT_AFTER
        before = nxt.type == tokenize.NAME and nxt.string in SPLIT_BEFORE and tok.type != tokenize.INDENT
        if (after or before) and tok.type not in (tokenize.INDENT, tokenize.DEDENT, tokenize.NL):
            ind = code.indent_of(tok.end[0]) + code.unit * 2
            options.append((at, code.tok_offset(*nxt.start), ("\n" if depth > 0 else " \\\n") + ind, tok.end[0]))
    if not options:
        return None
    start, end, new, row = _pick(rng, options)[0]
    how = "with a backslash" if new.startswith(" ") else "in brackets"
    return Change(((start, end, new),), f"line_split: line {row} {how}")


def _reindent(code: Code, unit: str) -> list[Edit]:
    """Edits that give every statement the indentation ``unit`` per block level. Continuation lines and the
    inner lines of a statement-level string (a docstring) keep their offset from their statement; a comment
    line at a statement's indentation moves with it; the inner lines of any other string are left alone."""
    level_of: dict[int, int] = {}
    owner: dict[int, int | None] = {}
    widths, stmt_row, first = [0], 0, True
    significant = [t for t in code.tokens if t.type not in SKIPPED]
    for i, tok in enumerate(significant):
        row = tok.start[0]
        if first:
            while tok.start[1] < widths[-1]:
                widths.pop()
            if tok.start[1] > widths[-1]:
                widths.append(tok.start[1])
            stmt_row, first, level_of[row] = row, False, len(widths) - 1
        elif row not in level_of and row not in owner:
            owner[row] = stmt_row
        if tok.type == tokenize.STRING and tok.end[0] > row:
            alone = i == 0 or significant[i - 1].type == tokenize.NEWLINE
            statement = alone and significant[i + 1].type == tokenize.NEWLINE
            for inner in range(row + 1, tok.end[0] + 1):
                owner[inner] = stmt_row if statement else None
        first = tok.type == tokenize.NEWLINE
    level_of_width = {len(code.indent_of(row)): level for row, level in level_of.items()}
    comments = {
        t.start[0]
        for t in code.tokens
        if t.type == tokenize.COMMENT and not code.lines[t.start[0] - 1][: t.start[1]].strip()
    }
    edits = []
    for row, line in enumerate(code.lines, start=1):
        old = line[: len(line) - len(line.lstrip())]
        if not line.strip():
            continue
        if row in level_of:
            new = unit * level_of[row]
        elif row in comments and row not in owner and len(old) in level_of_width:
            new = unit * level_of_width[len(old)]
        elif owner.get(row) is not None:
            base = code.indent_of(owner[row])
            if not old.startswith(base):
                continue
            new = unit * level_of[owner[row]] + old[len(base) :]
        else:
            continue
        if new != old:
            edits.append((code.starts[row - 1], code.starts[row - 1] + len(old), new))
    return edits


def indent_width(code: Code, rng: np.random.Generator) -> Change | None:
    """Indent every block by a different number of spaces (2, 3 or 8), consistently through the program."""
    widths = [w for w in (2, 3, 8) if " " * w != code.unit]
    width = int(rng.choice(widths))
    edits = _reindent(code, " " * width)
    return Change(tuple(edits), f"indent_width: {len(code.unit)} -> {width} spaces") if edits else None


def tab_indent(code: Code, rng: np.random.Generator) -> Change | None:
    """Indent every block with one tab per level instead of spaces."""
    edits = _reindent(code, "\t")
    return Change(tuple(edits), "tab_indent: spaces -> tabs") if edits else None


SYNTAX: dict[str, Transform] = {
    "dead_code": dead_code,
    "rename_variable": rename_variable,
    "for_while": for_while,
    "operand_swap": operand_swap,
}
FORMAT: dict[str, Transform] = {
    "newline_insert": newline_insert,
    "newline_remove": newline_remove,
    "line_split": line_split,
    "indent_width": indent_width,
    "tab_indent": tab_indent,
}
