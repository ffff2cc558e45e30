"""ReCode's func_name family: the entry point renamed (snake/camel case, a typo, a synonym of one of its
words, letter case).

Notable choices:
- The rename reaches every reference in the program: the ``def``, every ``Name`` use (recursion included)
  and whole-word mentions in docstrings; the suite renames it in the tests too (HumanEval/33's tests call
  the function by name as a reference), so ``check`` is called on the new name.
- A name already used anywhere in the program, a keyword or a builtin is never chosen.
"""

from __future__ import annotations

import ast
import re

import numpy as np

from fedpeft.evaluation.recode.docstring import flip_case, table, typo
from fedpeft.evaluation.recode.source import RESERVED, Change, Code, Transform, snake_camel

NAME_SYNONYMS = table(
    "sum:total, count:num, check:verify, is:check, get:fetch, find:search, sort:order, sorted:ordered, "
    "max:largest, min:smallest, remove:delete, reverse:flip, number:num, numbers:nums, string:str, "
    "strings:strs, list:array, words:tokens, word:token, prime:primal, product:prod, "
    "encode:encrypt, decode:decrypt, make:build, all:every, below:under, common:shared, digits:figures, "
    "unique:distinct, largest:biggest, smallest:tiniest, closest:nearest, element:item, elements:items, "
    "vowels:vocals, total:sum"
)
"""Substitutes for words of function names (joined in the name's own style)."""


def _name_parts(name: str) -> list[str]:
    return [p for p in re.split(r"_|(?<=[a-z0-9])(?=[A-Z])", name) if p]


def _rename_entry(code: Code, new: str, what: str) -> Change | None:
    """Every reference to the entry point renamed: its ``def``, ``Name`` uses, and words in docstrings."""
    old = code.entry
    if new == old or not new.isidentifier() or new in RESERVED or new in code.identifiers:
        return None
    fn = code.function
    defined = re.compile(r"(async\s+)?def\s+").match(code.text, code.span(fn)[0])
    edits = [(defined.end(), defined.end() + len(old), new)]
    uses = [n for n in ast.walk(code.tree) if isinstance(n, ast.Name) and n.id == old]
    if any(id(n) in code.in_fstrings for n in uses):
        return None
    edits += [(*code.span(n), new) for n in uses]
    docs = [n for n in ast.walk(code.tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)]
    for doc in docs:
        if isinstance(doc.value.value, str):
            start, end = code.span(doc)
            edits += [
                (start + m.start(), start + m.end(), new) for m in re.finditer(rf"\b{old}\b", code.text[start:end])
            ]
    return Change(tuple(edits), f"{what}: {old} -> {new}", entry=new)


def name_snake_camel(code: Code, rng: np.random.Generator) -> Change | None:
    """snake_case -> camelCase or PascalCase; camelCase -> snake_case or PascalCase."""
    other = snake_camel(code.entry)
    if rng.random() < 0.5 or other == code.entry:
        other = other[:1].upper() + other[1:]
    return _rename_entry(code, other, "snake_camel")


def name_typo(code: Code, rng: np.random.Generator) -> Change | None:
    """A keyboard typo in one of the name's words."""
    parts = _name_parts(code.entry)
    long = [i for i, p in enumerate(parts) if len(p) >= 3]
    if not long:
        return None
    i = int(rng.choice(long))
    parts[i] = typo(parts[i], rng)
    return _rename_entry(code, ("_" if "_" in code.entry else "").join(parts), "typo")


def name_synonym(code: Code, rng: np.random.Generator) -> Change | None:
    """A word of the name replaced by a synonym (a small built-in table), in the name's own style."""
    parts = _name_parts(code.entry)
    known = [i for i, p in enumerate(parts) if p.lower() in NAME_SYNONYMS]
    if not known:
        return None
    i = int(rng.choice(known))
    word = NAME_SYNONYMS[parts[i].lower()]
    snake = "_" in code.entry or len(parts) == 1
    if not snake:
        word = snake_camel(word)
    parts[i] = word[:1].upper() + word[1:] if parts[i][:1].isupper() else word
    return _rename_entry(code, ("_" if snake else "").join(parts), "synonym")


def name_char_case(code: Code, rng: np.random.Generator) -> Change | None:
    """Letters of the name with their case flipped."""
    return _rename_entry(code, flip_case(code.entry, rng), "char_case")


FUNC_NAME: dict[str, Transform] = {
    "snake_camel": name_snake_camel,
    "typo": name_typo,
    "synonym": name_synonym,
    "char_case": name_char_case,
}
