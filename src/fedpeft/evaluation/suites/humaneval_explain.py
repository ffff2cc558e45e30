"""HumanEvalExplain (Muennighoff et al., 2023, HumanEvalPack): describe a function, then rewrite it from the
description alone; the rewrite is scored by HumanEval's tests.

Two model passes, each one :data:`~fedpeft.evaluation.suites.base.Ask` call for the whole suite:

1. *Describe*: the model sees the canonical function with its docstring removed (so it cannot be copied),
   after the preamble (imports, helpers), and is asked for a description of at most N characters, N being
   the docstring's length. ``n`` samples per problem; each is cut to N characters, as HumanEvalExplain does.
2. *Synthesize*: for every description, one sample (``n=1``) of code from that description, the preamble
   and the entry point's ``def`` line only (the description becomes the docstring under it, so a base model
   in the ``plain`` format continues a body). Sample ``i`` of a problem is the code written from its
   description ``i``; pass@k is computed over those ``n`` programs.

Notable choices:
- The description is asked for as a comment after the code (``# ... in at most N characters:\\n#``), cut at
  the first blank line; comment markers are stripped and its lines joined with spaces.
- The prompt returned for a problem holds the pass-1 prompt and each pass-2 prompt (whose docstring is the
  description), so both passes can be inspected from the samples.
- An answer may be a whole function or the body after the ``def`` line (see
  :func:`~fedpeft.evaluation.suites.humaneval_fix.function_program`); the canonical answer is the whole
  canonical function.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from collections.abc import Sequence

from fedpeft.evaluation.suites import SUITES
from fedpeft.evaluation.suites.base import PROMPT_FORMATS, Ask, Problem, RunSettings, Suite, cut, format_prompt
from fedpeft.evaluation.suites.humaneval import humaneval_rows, tests_of
from fedpeft.evaluation.suites.humaneval_fix import function_program, header_of, split_entry

DESCRIBE_STOP = ("\n\n", "\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert ")
"""Where a description ends: a blank line or the next top-level statement."""

PASS_SEPARATOR = "\n\n=== pass 2, sample {index} ===\n"


def without_docstring(function: str) -> tuple[str, str]:
    """(the function without its docstring, the docstring cleaned): the docstring is the first string
    statement of the body, even after an import (HumanEval/115); ("function", "") when it has none."""
    node = ast.parse(function).body[0]
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        raise ValueError(f"expected a function, got: {function[:80]!r}")
    for i, stmt in enumerate(node.body):
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            doc = inspect.cleandoc(stmt.value.value)
            node.body = node.body[:i] + node.body[i + 1 :] or [ast.Pass()]
            return ast.unparse(node), doc
    return function, ""


def description_of(completion: str, max_chars: int) -> str:
    """The description in a pass-1 completion: comment markers stripped, lines joined, cut to ``max_chars``."""
    lines = (line.strip().lstrip("#").strip() for line in completion.splitlines())
    return " ".join(line for line in lines if line)[:max_chars]


def docstring_block(description: str) -> str:
    """``description`` as an indented docstring (backslashes and triple quotes escaped)."""
    text = description.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return f'    """{text}\n    """\n'


REFERENCE_DESCRIPTION = " The reference for {task_id}."


@SUITES.register("humaneval-explain")
class HumanEvalExplain(Suite):
    """HumanEvalExplain: describe HumanEval's canonical function, then rewrite it from the description (pass@k)."""

    def problems(self, seed: int) -> list[Problem]:
        problems = []
        for row in humaneval_rows():
            entry = row["entry_point"]
            preamble, function = split_entry(row["prompt"] + row["canonical_solution"], entry)
            bare, doc = without_docstring(function)
            limit = len(doc)
            shown = "\n\n".join(part for part in (preamble, bare) if part)
            problems.append(
                Problem(
                    task_id=row["task_id"],
                    prompt=f"{shown}\n\n\n# A description of {entry} in at most {limit} characters:\n#",
                    instruction="Provide a concise natural language description of the function using at most "
                    f"{limit} characters.",
                    test=tests_of(row),
                    entry_point=entry,
                    join="continue",
                    canonical=function,
                    meta={"preamble": preamble, "header": header_of(function), "max_chars": limit},
                )
            )
        return problems

    def synthesis(self, problem: Problem, description: str) -> Problem:
        """The pass-2 problem: write ``problem``'s function from ``description``."""
        meta = problem.meta
        code = "\n\n".join(part for part in (meta["preamble"], meta["header"]) if part)
        return dataclasses.replace(
            problem,
            prompt=code + docstring_block(description),
            instruction=f"{description}\nWrite functional code in Python according to the description.",
        )

    def reference_ask(self, problems: Sequence[Problem], answers: str = "canonical") -> Ask:
        """Pass 1 answers with a description naming the task (two HumanEval problems share a function name,
        so their pass-2 prompts would otherwise coincide), pass 2 with the canonical function: the self-check."""
        if answers != "canonical":
            return super().reference_ask(problems, answers)
        replies = {}
        for p in problems:
            said = REFERENCE_DESCRIPTION.format(task_id=p.task_id)
            written = self.synthesis(p, description_of(said, p.meta["max_chars"]))
            for fmt in PROMPT_FORMATS:
                replies[format_prompt(p, fmt)] = said
                replies[format_prompt(written, fmt)] = p.canonical

        def ask(prompts: Sequence[str], n: int, temperature: float, stop: Sequence[str]) -> list[list[str]]:
            return [[replies[prompt]] * n for prompt in prompts]

        return ask

    def program(self, problem: Problem, completion: str) -> str:
        meta = problem.meta
        return function_program(meta["preamble"], meta["header"], completion, problem.test, problem.entry_point)

    def solve(self, problems: Sequence[Problem], ask: Ask, run: RunSettings) -> list[tuple[str, list[str]]]:
        """Pass 1: ``n`` descriptions per problem (one call); pass 2: one program per description (one call, n=1).
        Sample ``i`` of a problem is the program written from its description ``i``."""
        n = run.samples
        first = [format_prompt(p, run.prompt_format) for p in problems]
        described = ask(first, n, run.temperature, DESCRIBE_STOP) if problems else []
        _check_shape(self.name, "describe", described, len(problems), n)
        descriptions = [
            description_of(cut(c, DESCRIBE_STOP), p.meta["max_chars"])
            for p, cs in zip(problems, described, strict=True)
            for c in cs
        ]
        wanted = [p for p in problems for _ in range(n)]
        second = [
            format_prompt(self.synthesis(p, d), run.prompt_format) for p, d in zip(wanted, descriptions, strict=True)
        ]
        stops = sorted({s for p in problems for s in p.stop})
        written = ask(second, 1, run.temperature, stops) if second else []
        _check_shape(self.name, "synthesize", written, len(second), 1)
        solved = []
        for j, (prompt, p) in enumerate(zip(first, problems, strict=True)):
            rows = range(j * n, (j + 1) * n)
            shown = prompt + "".join(PASS_SEPARATOR.format(index=i) + second[r] for i, r in enumerate(rows))
            solved.append((shown, [cut(written[r][0], p.stop) for r in rows]))
        return solved


def _check_shape(suite: str, step: str, completions: Sequence[Sequence[str]], prompts: int, n: int) -> None:
    if len(completions) != prompts or any(len(c) != n for c in completions):
        raise ValueError(
            f"suite {suite!r} ({step} pass): the generator returned the wrong number of completions "
            f"(wanted {n} for each of {prompts} prompts)"
        )
