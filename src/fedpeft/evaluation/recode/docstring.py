"""ReCode's docstring family: the natural-language words of the entry point's description perturbed
(synonyms, swapped neighbours, case changes, typos), or the docstring turned into ``#`` comments.

Notable choices:
- Only description words change: doctest lines, example lines (``==``, ``=>``, ``f(...)``), quoted text and
  words naming code identifiers, keywords or builtins are kept.
- Synonyms come from a small built-in table; typos use a QWERTY neighbour table. :func:`flip_case`,
  :func:`typo` and :func:`table` are shared with the func_name family.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

import numpy as np

from fedpeft.evaluation.recode.source import RESERVED, Change, Code, Transform


def table(pairs: str) -> dict[str, str]:
    """``"a:b, c:d"`` as ``{"a": "b", "c": "d"}``."""
    return dict(pair.split(":") for pair in pairs.split(", "))


SYNONYMS = table(
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


def flip_case(word: str, rng: np.random.Generator) -> str:
    """Each letter's case flipped with probability 0.35 (ReCode's ChangeCharCase), at least one letter."""
    flips = rng.random(len(word)) < 0.35
    flips[int(rng.integers(len(word)))] = True
    return "".join(c.swapcase() if f else c for c, f in zip(word, flips, strict=True))


def typo(word: str, rng: np.random.Generator) -> str:
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
    return _word_change(code, "char_case", lambda w: True, flip_case, rng, 0.35)


def doc_typo(code: Code, rng: np.random.Generator) -> Change | None:
    """Put typos (inserted, substituted, dropped or swapped letters) into some words of the docstring."""
    return _word_change(code, "typo", lambda w: len(w) >= 3, typo, rng, 0.15)


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
