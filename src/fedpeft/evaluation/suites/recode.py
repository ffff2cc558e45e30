"""ReCode (Wang et al., 2022): robustness of code generation to perturbed HumanEval prompts, as four suites,
``recode-docstring``, ``recode-format``, ``recode-func_name`` and ``recode-syntax``.

Each suite poses every HumanEval problem ``variants`` (ReCode's *s*) times, each variant perturbed with its
own seeded generator, and gives every variant of a problem the original task id as ``group``: robust
pass@k counts a sample index only if it passes on every variant. Greedy decoding (n=1) is the default.

Notable choices:
- The perturbations themselves live in :mod:`fedpeft.evaluation.recode` (one module per family): format and
  syntax perturb ReCode's partial code and the variant's canonical completion is the rest of the perturbed
  program; docstring and func_name perturb the prompt.
- A renamed entry point (func_name) is renamed in the tests too (HumanEval/33's tests call the function by
  name as a reference), so ``check`` is called on the new name; the instruction shows the perturbed prompt
  for docstring and func_name variants (not when the docstring became comments).
- Variant ``i`` applies the family's ``i``-th perturbation (cycling), or the one ``perturbation`` names;
  where none applies the variant is the original problem, with ``meta["perturbation"] == "none"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from fedpeft.evaluation.recode import DOCSTRING, FORMAT, FUNC_NAME, SYNTAX, perturb
from fedpeft.evaluation.suites import SUITES
from fedpeft.evaluation.suites.base import Problem, Suite
from fedpeft.evaluation.suites.humaneval import humaneval_rows, synthesize_instruction, tests_of
from fedpeft.registry import setting


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
        return [
            self.problem(row, variant, seed=seed, index=index)
            for index, row in enumerate(humaneval_rows())
            for variant in range(self.settings.variants)
        ]

    def problem(self, row: dict[str, Any], variant: int, *, seed: int, index: int) -> Problem:
        """Variant ``variant`` of HumanEval ``row`` (number ``index``): the perturbed prompt to complete, its
        tests and instruction under the (possibly renamed) entry point."""
        v = perturb(row, self.family, variant, seed=seed, index=index, only=self.settings.perturbation)
        test_row = {**row, "entry_point": v.entry, "test": re.sub(rf"\b{row['entry_point']}\b", v.entry, row["test"])}
        doc_shown = self.family in ("docstring", "func_name") and v.applied != "doc_to_comments"
        shown = v.prompt if doc_shown else row["prompt"]
        return Problem(
            task_id=f"{row['task_id']}/{self.family}/{variant}",
            prompt=v.prompt,
            instruction=synthesize_instruction({**row, "prompt": shown, "entry_point": v.entry}),
            test=tests_of(test_row),
            entry_point=v.entry,
            canonical=v.canonical,
            group=row["task_id"],
            meta={"family": self.family, "variant": variant, "perturbation": v.what},
        )


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
