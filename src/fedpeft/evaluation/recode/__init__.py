"""ReCode's semantics-preserving perturbations (Wang et al., 2022), the machinery behind the four
``recode-*`` suites: the source model and edits (:mod:`.source`), one module per family (:mod:`.docstring`,
:mod:`.formatting`, :mod:`.names` for func_name, :mod:`.syntax`) and the seeded variant of one HumanEval
row (:mod:`.variant`).

It lives outside ``evaluation/suites/`` because every module there is imported as a suite module."""

from __future__ import annotations

from fedpeft.evaluation.recode.docstring import DOCSTRING
from fedpeft.evaluation.recode.formatting import FORMAT
from fedpeft.evaluation.recode.names import FUNC_NAME
from fedpeft.evaluation.recode.source import RESERVED, Change, Code, Edit, Transform, apply_edits, partial_cut
from fedpeft.evaluation.recode.syntax import SYNTAX
from fedpeft.evaluation.recode.variant import FAMILIES, PARTIAL, Variant, perturb

__all__ = [
    "DOCSTRING",
    "FAMILIES",
    "FORMAT",
    "FUNC_NAME",
    "PARTIAL",
    "RESERVED",
    "SYNTAX",
    "Change",
    "Code",
    "Edit",
    "Transform",
    "Variant",
    "apply_edits",
    "partial_cut",
    "perturb",
]
