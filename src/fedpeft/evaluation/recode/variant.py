"""One ReCode variant of a HumanEval row: the family's seeded perturbation applied to the program, and the
program split again at its moved cut.

Notable choices:
- Variant ``i`` applies the family's ``i``-th perturbation (cycling), or the one ``only`` names. Where it
  cannot apply (a docstring without eligible words, a problem without a loop), the next one of the family
  is tried; where none applies the variant is the original program, described as ``"none"``, as ReCode does.
- Each variant has its own generator, seeded by (seed, family, problem index, variant index).
- Every variant is checked to parse; one that does not is a bug, reported with its task id.
- Nothing here imports the suites package, so the suite modules can import this one without a cycle.
"""

from __future__ import annotations

import ast
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedpeft.evaluation.recode.docstring import DOCSTRING
from fedpeft.evaluation.recode.formatting import FORMAT
from fedpeft.evaluation.recode.names import FUNC_NAME
from fedpeft.evaluation.recode.source import Code, Transform, apply_edits, partial_cut
from fedpeft.evaluation.recode.syntax import SYNTAX

FAMILIES: dict[str, dict[str, Transform]] = {
    "docstring": DOCSTRING,
    "format": FORMAT,
    "func_name": FUNC_NAME,
    "syntax": SYNTAX,
}
PARTIAL = frozenset({"format", "syntax"})
"""The families that perturb ReCode's partial code (prompt + half the canonical solution)."""


@dataclass(frozen=True)
class Variant:
    """A perturbed program split at its cut (``prompt + canonical`` is the whole program), its entry point,
    the name of the perturbation applied (``"none"``) and its description for ``Problem.meta``."""

    prompt: str
    canonical: str
    entry: str
    applied: str
    what: str


def perturb(row: dict[str, Any], family: str, variant: int, *, seed: int, index: int, only: str = "all") -> Variant:
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
    return Variant(text[:cut], text[cut:], entry, applied, change.what if change else "none")
