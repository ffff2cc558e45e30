"""The source model behind the ReCode perturbations (Wang et al., 2022): a program with its prompt cut, the
edits a perturbation makes, and ReCode's partial-code cut.

A HumanEval problem is held as one program, prompt + canonical solution, with a *cut*: the offset where the
prompt ends. A perturbation is a list of text edits at positions found with ``ast`` and ``tokenize``; after
the edits, the program is split again at the moved cut, so the variant's prompt is the perturbed partial
code and its canonical completion is the rest of the same, consistently perturbed program.

Notable choices:
- Edits, never ``ast.unparse``: everything a perturbation does not touch (docstrings, comments, quoting,
  layout) stays byte for byte. ``ast`` column offsets are UTF-8 byte offsets; :class:`Code` converts them.
- ReCode's partial code: the prompt plus the first half of the canonical solution's non-blank lines, cut at
  the end of a logical line (:func:`partial_cut`).
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


def pick(rng: np.random.Generator, items: list, k: int = 1) -> list:
    """``k`` distinct items in their original order."""
    chosen = sorted(rng.choice(len(items), size=min(k, len(items)), replace=False).tolist())
    return [items[i] for i in chosen]


def walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under ``node`` (itself excluded) in source order."""
    for child in ast.iter_child_nodes(node):
        yield child
        yield from walk(child)


def statements(code: Code) -> list[ast.stmt]:
    """The entry point's statements in source order, its docstring excluded."""
    return [n for n in walk(code.function) if isinstance(n, ast.stmt) and n is not code.docstring]


def snake_camel(name: str) -> str:
    """``snake_case`` <-> ``camelCase`` (the name itself when it is neither)."""
    if "_" in name.strip("_"):
        head, *rest = name.strip("_").split("_")
        return head + "".join(part[:1].upper() + part[1:] for part in rest if part)
    if re.search(r"[a-z][A-Z]", name):
        return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)
    return name
