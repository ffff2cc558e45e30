"""ReCode (Wang et al., 2022): robustness of code generation to perturbed HumanEval prompts, as four suites,
``recode-docstring``, ``recode-format``, ``recode-func_name`` and ``recode-syntax``.

Each suite poses every HumanEval problem ``variants`` (ReCode's *s*) times, each variant perturbed with its
own seeded generator, and gives every variant of a problem the original task id as ``group``: robust
pass@k counts a sample index only if it passes on every variant. Greedy decoding (n=1) is the default.

Notable choices:
- docstring: only the natural-language words of the description change (synonyms from a small built-in
  table, swapped neighbours, case changes, typos) or the docstring becomes ``#`` comments; doctest lines,
  example lines (``==``, ``=>``, ``f(...)``), quoted text and words naming code identifiers are kept.
- func_name: the entry point is renamed (snake/camel case, typo, synonym of a word, case change) in the
  prompt (signature, docstring, recursion), the canonical solution and the tests (HumanEval/33's tests call
  the function by name as a reference), and ``check`` is called on the new name.
- format and syntax perturb ReCode's partial code (see :mod:`fedpeft.evaluation.suites.perturb`); the
  variant's canonical completion is the rest of the perturbed program.
- Variant ``i`` applies the family's ``i``-th perturbation (cycling), or the one ``perturbation`` names.
  Where it cannot apply to a problem (a docstring without eligible words, a problem without a loop), the
  next one of the family is tried; where none applies the variant is the original problem, with
  ``meta["perturbation"] == "none"``, as ReCode does. Every variant is checked to parse.
"""

from __future__ import annotations

import ast
import inspect
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedpeft.evaluation.suites import SUITES
from fedpeft.evaluation.suites.base import Problem, Suite
from fedpeft.evaluation.suites.humaneval import humaneval_rows, synthesize_instruction, tests_of
from fedpeft.evaluation.suites.perturb import (
    FORMAT,
    RESERVED,
    SYNTAX,
    Change,
    Code,
    Transform,
    apply_edits,
    partial_cut,
    snake_camel,
)
from fedpeft.registry import setting


def _table(pairs: str) -> dict[str, str]:
    """``"a:b, c:d"`` as ``{"a": "b", "c": "d"}``."""
    return dict(pair.split(":") for pair in pairs.split(", "))


SYNONYMS = _table(
    "return:give back, returns:gives back, given:provided, list:sequence, number:figure, "
    "numbers:figures, string:text, strings:texts, function:routine, write:create, find:determine, "
    "check:verify, checks:verifies, each:every, all:every, only:solely, largest:biggest, "
    "smallest:tiniest, first:initial, last:final, input:argument, output:result, integer:whole number, "
    "integers:whole numbers, count:tally, contains:holds, characters:symbols, "
    "character:symbol, sum:total, example:instance, examples:instances, create:build, task:job, "
    "should:must, if:when, otherwise:else, between:amid, similar:alike, value:quantity, "
    "values:quantities, order:sequence, sorted:ordered, element:item, elements:items, word:term, "
    "words:terms, length:size, equal:identical, closer:nearer, have:possess, has:possesses, get:obtain"
)
"""Synonym-like substitutes for common words of HumanEval's descriptions."""
NAME_SYNONYMS = _table(
    "sum:total, count:num, check:verify, is:check, get:fetch, find:search, sort:order, sorted:ordered, "
    "max:largest, min:smallest, remove:delete, reverse:flip, number:num, numbers:nums, string:str, "
    "strings:strs, list:array, words:tokens, word:token, prime:primal, product:prod, "
    "encode:encrypt, decode:decrypt, make:build, all:every, below:under, common:shared, digits:figures, "
    "unique:distinct, largest:biggest, smallest:tiniest, closest:nearest, element:item, elements:items, "
    "vowels:vocals, total:sum"
)
"""Substitutes for words of function names (joined in the name's own style)."""
NEIGHBOURS = dict(
    pair.split(":")
    for pair in (
        "q:wa w:qes e:wrd r:etf t:ryg y:tuh u:yij i:uok o:ipl p:ol a:qsz s:adw d:sfe f:dgr g:fht h:gjy j:hku "
        "k:jli l:ko z:ax x:zc c:xv v:cb b:vn n:bm m:n"
    ).split()
)
"""Keys next to each letter on a QWERTY keyboard (the typos a person makes)."""
EXAMPLE_MARKS = (">>>", "==", "=>", "->", "\u279e", "...")
WORD = re.compile(r"(?<![\w\\'\"`.(\[])[A-Za-z]{2,}(?![\w'\"`(\[])(?!\.\w)")
QUOTED = re.compile(r"(?<![A-Za-z])(['\"`])[^'\"`\n]*\1(?![A-Za-z])")


# ------------------------------------------------------------------------------------------- docstring


def _docstring_words(code: Code) -> list[tuple[int, int]]:
    """The spans of the docstring's eligible words: in description lines (not doctests or examples), outside
    quotes, not naming anything in the code, not keywords or builtins."""
    if code.docstring is None:
        return []
    start, end = code.span(code.docstring)
    literal = code.text[start:end]
    opening = re.match(r"[rRuU]?('''|\"\"\"|'|\")", literal)
    if opening is None or not literal.endswith(opening.group(1)):
        return []
    body = literal[opening.end() : len(literal) - len(opening.group(1))]
    protected = code.names | RESERVED
    spans, in_example, at = [], False, 0
    for line in body.split("\n"):
        stripped = line.strip()
        in_example = bool(stripped) and (stripped.startswith(">>>") or in_example)
        code_like = in_example or any(m in line for m in EXAMPLE_MARKS) or re.search(r"\w\(", line)
        if not code_like:
            masked = QUOTED.sub(lambda m: " " * len(m.group(0)), line)
            for m in WORD.finditer(masked):
                if m.group(0) not in protected and m.group(0).lower() not in protected:
                    spans.append((at + m.start(), at + m.end()))
        at += len(line) + 1
    return [(start + opening.end() + s, start + opening.end() + e) for s, e in spans]


def _word_change(
    code: Code,
    what: str,
    applies: Callable[[str], bool],
    rewrite: Callable[[str, np.random.Generator], str],
    rng: np.random.Generator,
    share: float,
) -> Change | None:
    """Rewrite a share (at least one) of the docstring's eligible words with ``rewrite``."""
    spans = [s for s in _docstring_words(code) if applies(code.text[s[0] : s[1]])]
    if not spans:
        return None
    chosen = sorted(rng.choice(len(spans), size=max(1, round(share * len(spans))), replace=False).tolist())
    edits, shown = [], []
    for i in chosen:
        start, end = spans[i]
        old = code.text[start:end]
        new = rewrite(old, rng)
        if new != old:
            edits.append((start, end, new))
            shown.append(f"{old}->{new}")
    return Change(tuple(edits), f"{what}: {', '.join(shown)}") if edits else None


def _synonym(word: str, rng: np.random.Generator) -> str:
    new = SYNONYMS[word.lower()]
    return new[:1].upper() + new[1:] if word[:1].isupper() else new


def _case(word: str, rng: np.random.Generator) -> str:
    """Each letter's case flipped with probability 0.35 (ReCode's ChangeCharCase), at least one letter."""
    flips = rng.random(len(word)) < 0.35
    flips[int(rng.integers(len(word)))] = True
    return "".join(c.swapcase() if f else c for c, f in zip(word, flips, strict=True))


def _typo(word: str, rng: np.random.Generator) -> str:
    """One keyboard typo inside a word of three letters or more: a neighbouring key inserted or substituted,
    a letter dropped, or two letters swapped."""
    at = int(rng.integers(1, len(word) - 1))
    near = NEIGHBOURS.get(word[at].lower(), "e")
    key = near[int(rng.integers(len(near)))]
    kind = int(rng.integers(4))
    if kind == 0:
        new = word[:at] + key + word[at:]
    elif kind == 1:
        new = word[:at] + key + word[at + 1 :]
    elif kind == 3 and word[at - 1] != word[at]:
        new = word[: at - 1] + word[at] + word[at - 1] + word[at + 1 :]
    else:
        new = word[:at] + word[at + 1 :]
    return new if new != word else word[:at] + word[at + 1 :]


def doc_synonym(code: Code, rng: np.random.Generator) -> Change | None:
    """Replace words of the docstring by synonyms from a small built-in table."""
    return _word_change(code, "synonym", lambda w: w.lower() in SYNONYMS, _synonym, rng, 0.5)


def doc_char_case(code: Code, rng: np.random.Generator) -> Change | None:
    """Flip the case of letters in some words of the docstring."""
    return _word_change(code, "char_case", lambda w: True, _case, rng, 0.35)


def doc_typo(code: Code, rng: np.random.Generator) -> Change | None:
    """Put typos (inserted, substituted, dropped or swapped letters) into some words of the docstring."""
    return _word_change(code, "typo", lambda w: len(w) >= 3, _typo, rng, 0.15)


def doc_swap_words(code: Code, rng: np.random.Generator) -> Change | None:
    """Swap one or two pairs of neighbouring words of the docstring."""
    spans = _docstring_words(code)
    pairs = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if code.text[a[1] : b[0]] == " "]
    if not pairs:
        return None
    chosen = sorted(rng.choice(len(pairs), size=min(2, len(pairs)), replace=False).tolist())
    edits, shown, used = [], [], -1
    for i in chosen:
        (s1, e1), (s2, e2) = pairs[i]
        if s1 < used:
            continue
        first, second = code.text[s1:e1], code.text[s2:e2]
        if first.lower() == second.lower():
            continue
        edits.append((s1, e2, f"{second} {first}"))
        shown.append(f"{first} {second}->{second} {first}")
        used = e2
    return Change(tuple(edits), f"swap_words: {', '.join(shown)}") if edits else None


def doc_to_comments(code: Code, rng: np.random.Generator) -> Change | None:
    """Turn the docstring into ``#`` comment lines above the body (its text as written)."""
    doc = code.docstring
    if doc is None or not code.starts_line(doc):
        return None
    start, end = code.span(doc)
    if code.text[end : code.starts[doc.end_lineno] - 1].strip():
        return None
    literal = code.text[start:end]
    quote = re.match(r"[rRuU]?('''|\"\"\"|'|\")", literal)
    body = literal[quote.end() : len(literal) - len(quote.group(1))]
    ind = code.indent_of(doc.lineno)
    lines = inspect.cleandoc(body).split("\n")
    comment = "\n".join(f"{ind}# {line}".rstrip() for line in lines)
    line_start = code.starts[doc.lineno - 1]
    return Change(((line_start, code.starts[doc.end_lineno] - 1, comment),), "doc_to_comments")


DOCSTRING: dict[str, Transform] = {
    "synonym": doc_synonym,
    "swap_words": doc_swap_words,
    "char_case": doc_char_case,
    "typo": doc_typo,
    "doc_to_comments": doc_to_comments,
}


# ------------------------------------------------------------------------------------------- func_name


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
    parts[i] = _typo(parts[i], rng)
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
    return _rename_entry(code, _case(code.entry, rng), "char_case")


FUNC_NAME: dict[str, Transform] = {
    "snake_camel": name_snake_camel,
    "typo": name_typo,
    "synonym": name_synonym,
    "char_case": name_char_case,
}


# ---------------------------------------------------------------------------------------------- suites

FAMILIES: dict[str, dict[str, Transform]] = {
    "docstring": DOCSTRING,
    "format": FORMAT,
    "func_name": FUNC_NAME,
    "syntax": SYNTAX,
}
PARTIAL = frozenset({"format", "syntax"})
"""The families that perturb ReCode's partial code (prompt + half the canonical solution)."""


def perturb(row: dict[str, Any], family: str, variant: int, *, seed: int, index: int, only: str = "all") -> Problem:
    """Variant ``variant`` of HumanEval ``row`` (number ``index``) for ``family``: a seeded perturbation."""
    transforms = FAMILIES[family]
    prompt, canonical = row["prompt"], row["canonical_solution"]
    cut = partial_cut(prompt, canonical) if family in PARTIAL else len(prompt)
    code = Code(prompt + canonical, cut, row["entry_point"])
    rng = np.random.default_rng([seed % 2**63, zlib.crc32(family.encode()), index, variant])
    names = list(transforms) if only == "all" else [only]
    change, applied = None, "none"
    for k in range(len(names)):
        name = names[(variant + k) % len(names)]
        tried = transforms[name](code, rng)
        if tried is not None and tried.edits:
            change, applied = tried, name
            break
    text, cut = apply_edits(code.text, code.cut, change.edits) if change else (code.text, code.cut)
    entry = change.entry if change and change.entry else row["entry_point"]
    try:
        ast.parse(text)
    except SyntaxError as err:
        raise RuntimeError(f"recode-{family} variant {variant} of {row['task_id']} does not parse: {err}") from err
    test_row = {**row, "entry_point": entry, "test": re.sub(rf"\b{row['entry_point']}\b", entry, row["test"])}
    shown = text[:cut] if family in ("docstring", "func_name") and applied != "doc_to_comments" else prompt
    return Problem(
        task_id=f"{row['task_id']}/{family}/{variant}",
        prompt=text[:cut],
        instruction=synthesize_instruction({**row, "prompt": shown, "entry_point": entry}),
        test=tests_of(test_row),
        entry_point=entry,
        canonical=text[cut:],
        group=row["task_id"],
        meta={"family": family, "variant": variant, "perturbation": change.what if change else "none"},
    )


@dataclass(frozen=True)
class ReCodeSettings:
    """Settings of a ReCode suite (``perturbations`` lists its family's perturbation names)."""

    perturbations: ClassVar[tuple[str, ...]] = ()
    variants: int = setting(5, "Perturbed variants per HumanEval problem (ReCode's s); each must be passed.")
    perturbation: str = setting("all", "One perturbation of the family for every variant, or 'all' to cycle.")

    def __post_init__(self) -> None:
        if isinstance(self.variants, bool) or not isinstance(self.variants, int) or self.variants < 1:
            raise ValueError(f"variants={self.variants!r} must be an integer >= 1")
        valid = ("all", *self.perturbations)
        if self.perturbation not in valid:
            raise ValueError(f"perturbation={self.perturbation!r} is not one of {', '.join(valid)}")


class ReCode(Suite):
    """A ReCode family: every HumanEval problem perturbed ``variants`` times, scored as robust pass@k."""

    family: ClassVar[str] = ""

    def problems(self, seed: int) -> list[Problem]:
        s = self.settings
        return [
            perturb(row, self.family, variant, seed=seed, index=index, only=s.perturbation)
            for index, row in enumerate(humaneval_rows())
            for variant in range(s.variants)
        ]


@dataclass(frozen=True)
class DocstringSettings(ReCodeSettings):
    perturbations: ClassVar[tuple[str, ...]] = tuple(DOCSTRING)


@dataclass(frozen=True)
class FormatSettings(ReCodeSettings):
    perturbations: ClassVar[tuple[str, ...]] = tuple(FORMAT)


@dataclass(frozen=True)
class FuncNameSettings(ReCodeSettings):
    perturbations: ClassVar[tuple[str, ...]] = tuple(FUNC_NAME)


@dataclass(frozen=True)
class SyntaxSettings(ReCodeSettings):
    perturbations: ClassVar[tuple[str, ...]] = tuple(SYNTAX)


@SUITES.register("recode-docstring")
class ReCodeDocstring(ReCode):
    """ReCode docstring: synonyms, swapped words, case changes, typos, docstring as comments (robust pass@k)."""

    family = "docstring"
    Settings = DocstringSettings


@SUITES.register("recode-format")
class ReCodeFormat(ReCode):
    """ReCode format: empty lines added/removed, split lines, indentation width or tabs (robust pass@k)."""

    family = "format"
    Settings = FormatSettings


@SUITES.register("recode-func_name")
class ReCodeFuncName(ReCode):
    """ReCode func_name: the entry point renamed (case style, typo, synonym, letter case) (robust pass@k)."""

    family = "func_name"
    Settings = FuncNameSettings


@SUITES.register("recode-syntax")
class ReCodeSyntax(ReCode):
    """ReCode syntax: dead code, renamed variables, for<->while, swapped operands (robust pass@k)."""

    family = "syntax"
    Settings = SyntaxSettings
