"""ReCode's format family: layout changes of the partial code (empty lines added or removed, a line split,
indentation width or tabs).

Notable choices:
- Empty lines, joins and splits only touch the partial code; an indentation change is made consistently
  through the whole program, so the canonical completion still fits the prompt.
- Re-indentation works from ``tokenize``: a statement's continuation lines and a docstring's inner lines
  keep their offset from it, and the inner lines of any other string are left alone.
"""

from __future__ import annotations

import ast
import tokenize

import numpy as np

from fedpeft.evaluation.recode.source import Change, Code, Edit, Transform, pick

SKIPPED = (tokenize.NL, tokenize.COMMENT, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT)


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
    chosen = pick(rng, ends, int(rng.integers(1, 4)))
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
    edit, what = pick(rng, options)[0]
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
    start, end, new, row = pick(rng, options)[0]
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


FORMAT: dict[str, Transform] = {
    "newline_insert": newline_insert,
    "newline_remove": newline_remove,
    "line_split": line_split,
    "indent_width": indent_width,
    "tab_indent": tab_indent,
}
