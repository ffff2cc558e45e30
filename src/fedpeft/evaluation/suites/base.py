"""What a code-evaluation suite is, and how one is run: problems in, completions from a model, verdicts out.

A suite is a registered class (one file in ``evaluation/suites/``) that turns its source (HumanEval's 164
problems, the stdlib corpus, ...) into :class:`Problem` objects and says how a completion becomes a program
to run in the sandbox. :func:`run_suite` does the rest the same way for every suite: format the prompts,
ask the model for ``n`` samples each (one call, so a generator can batch them), judge every sample (in the
sandbox, in parallel, or as a YES/NO answer), and score pass@k over problem *groups* (a group is one problem
and, for robustness suites, its perturbed variants: a sample index counts only if it passes on every
variant).

Notable choices:
- The model is reached only through an :data:`Ask` callable, so suites are tested with scripted
  completions (the canonical solution, a known bug) and no model at all.
- Three prompt formats: ``plain`` (the code prompt as is, for base models), ``alpaca`` (the instruction in
  the Alpaca template fedpeft's instruction recipes train with) and ``question-answer`` (Astraios'
  ``Question: ...\\n\\nAnswer:`` format, the code prompt opening the answer).
- A completion is joined to its problem in one of two ways: ``continue`` (the prompt's code, then the
  completion: HumanEval-style) or ``whole`` (the completion is a whole function: fix/explain answers).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from fedpeft.errors import FedpeftError
from fedpeft.evaluation.passk import check_ks, pass_at_k
from fedpeft.evaluation.sandbox import SandboxLimits, run_programs
from fedpeft.models.generate import cut_at_stop
from fedpeft.registry import NoSettings

PROMPT_FORMATS = ("plain", "alpaca", "question-answer")
PromptFormat = Literal["plain", "alpaca", "question-answer"]

HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
"""Codex's stop sequences for completing a function body: the next top-level statement ends it."""

Ask = Callable[[Sequence[str], int, float, Sequence[str]], list[list[str]]]
"""``ask(prompts, n, temperature, stop)``: ``n`` completions per prompt (``temperature`` 0 is greedy; each
completion cut at the first stop sequence), in prompt order."""


class SuiteError(FedpeftError, ValueError):
    """A suite that cannot run as asked (its limit, its samples, its source)."""


@dataclass(frozen=True)
class Problem:
    """One problem as a suite poses it."""

    task_id: str
    prompt: str
    """The code the model continues (``continue``) or sees (``whole``): a signature and docstring, a buggy
    function, a description."""
    instruction: str
    """The same request in words, for the instruction formats."""
    test: str = ""
    """Code run after the solution; it raises if the solution is wrong (execution suites)."""
    entry_point: str = ""
    join: Literal["continue", "whole"] = "continue"
    canonical: str = ""
    """A completion known to pass (joined the same way as a model's): the suite's self-check."""
    stop: tuple[str, ...] = HUMANEVAL_STOP
    answer: bool | None = None
    """The gold YES/NO answer (YES/NO suites)."""
    group: str = ""
    """Problems of one group are scored together, worst case (robustness variants); default the task id."""
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def group_id(self) -> str:
        return self.group or self.task_id


@dataclass(frozen=True)
class Sample:
    """One completion and its verdict."""

    task_id: str
    index: int
    prompt: str
    completion: str
    passed: bool
    status: str
    """passed / failed / timeout / error (execution), or correct / wrong / unparsed (YES/NO)."""
    detail: str = ""

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SuiteResult:
    """A suite's scores (``metrics``) and every sample behind them."""

    suite: str
    metrics: dict[str, float]
    samples: list[Sample]


def format_prompt(problem: Problem, prompt_format: str) -> str:
    """The text the model is given for ``problem`` in ``prompt_format``."""
    if prompt_format == "plain":
        return problem.prompt
    if prompt_format == "question-answer":
        return f"Question: {problem.instruction}\n\nAnswer:\n{problem.prompt}"
    if prompt_format == "alpaca":
        from fedpeft.data.tasks.common import format_prompt as alpaca

        return alpaca(problem.instruction) + problem.prompt
    raise ValueError(f"unknown eval.suite_prompt {prompt_format!r}; valid: {', '.join(PROMPT_FORMATS)}")


def strip_fence(text: str) -> str:
    """The code inside the first Markdown code fence of ``text`` (chat-tuned models wrap code), else ``text``."""
    if "```" not in text:
        return text
    body = text.split("```", 2)[1]
    first, _, rest = body.partition("\n")
    return rest if first.strip().isidentifier() or not first.strip() else body


def solution(problem: Problem, completion: str) -> str:
    """The code a completion stands for: the prompt continued, or the completion alone as a whole function."""
    if problem.join == "whole":
        return strip_fence(completion)
    return problem.prompt + completion


@dataclass(frozen=True)
class RunSettings:
    """How a suite is run (eval.suite_* keys; ``fedpeft evaluate``'s options)."""

    limit: int | None = None
    """At most this many problems (the first ones, in the suite's order)."""
    samples: int = 1
    """Samples per problem (n)."""
    temperature: float = 0.0
    ks: tuple[int, ...] = (1,)
    prompt_format: str = "plain"
    seed: int = 0
    sandbox: SandboxLimits = SandboxLimits(timeout_s=10.0, cpu_s=10, memory_mb=1024)
    workers: int | None = None
    """Samples run in the sandbox at once (default: the CPU count)."""


class Suite:
    """A code-evaluation suite. Subclasses set ``scoring`` and implement :meth:`problems`; a suite whose
    samples take more than one model call (explain: describe, then write) overrides :meth:`solve`."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    scoring: ClassVar[Literal["execution", "yesno"]] = "execution"

    def __init__(self, settings: Any = None):
        self.settings = settings if settings is not None else type(self).Settings()

    def problems(self, seed: int) -> list[Problem]:
        """Every problem of the suite, in a fixed order (``seed`` drives any random construction)."""
        raise NotImplementedError

    def program(self, problem: Problem, completion: str) -> str:
        """The program the sandbox runs for one completion: the solution, then the problem's tests."""
        return f"{solution(problem, completion)}\n\n{problem.test}\n"

    def solve(self, problems: Sequence[Problem], ask: Ask, run: RunSettings) -> list[tuple[str, list[str]]]:
        """(prompt shown, ``n`` completions) per problem. One :data:`Ask` call for the whole suite."""
        prompts = [format_prompt(p, run.prompt_format) for p in problems]
        stops = sorted({s for p in problems for s in p.stop})
        completions = ask(prompts, run.samples, run.temperature, stops) if problems else []
        if len(completions) != len(problems) or any(len(c) != run.samples for c in completions):
            raise SuiteError(f"suite {self.name!r}: the generator returned the wrong number of completions")
        return [
            (prompt, [cut(c, p.stop) for c in cs]) for prompt, cs, p in zip(prompts, completions, problems, strict=True)
        ]

    def reference_ask(self, problems: Sequence[Problem], answers: str = "canonical") -> Ask:
        """An :data:`Ask` that gives every problem its reference answer instead of a model's: ``canonical``
        (known to pass: the suite's self-check) or ``buggy`` (a known-wrong answer from ``meta['buggy']``,
        where the suite has one). Keyed by every prompt format of every problem."""
        if answers not in REFERENCE_ANSWERS:
            raise SuiteError(f"unknown reference answers {answers!r}; valid: {', '.join(REFERENCE_ANSWERS)}")
        by_prompt = {format_prompt(p, fmt): p for p in problems for fmt in PROMPT_FORMATS}

        def ask(prompts: Sequence[str], n: int, temperature: float, stop: Sequence[str]) -> list[list[str]]:
            return [[reference_answer(by_prompt[prompt], answers)] * n for prompt in prompts]

        return ask


REFERENCE_ANSWERS = ("canonical", "buggy")


def reference_answer(problem: Problem, answers: str) -> str:
    """A problem's canonical answer (a YES/NO problem's gold answer in words), or its known-wrong one."""
    if answers == "buggy":
        if "buggy" not in problem.meta:
            raise SuiteError(f"{problem.task_id} has no buggy reference answer (only humaneval-fix-style suites do)")
        return str(problem.meta["buggy"])
    if problem.canonical or problem.answer is None:
        return problem.canonical
    return "Yes." if problem.answer else "No."


cut = cut_at_stop
"""``text`` up to its first stop sequence (generation's own cut, so a suite cuts exactly as the generator does)."""


def answer_of(text: str) -> bool | None:
    """Astraios' reading of a YES/NO answer: its first sentence; yes without no is YES, no without yes is NO;
    failing that, the keywords of a defect/clone answer ("is buggy", "not a clone", ...); else None."""
    first = text.strip().split("\n")[0]
    for end in ".!?":
        first = first.split(end)[0]
    words = {w.strip(",;:()\"'*`").lower() for w in first.split()}
    yes, no = "yes" in words, "no" in words
    if yes != no:
        return yes
    lowered = text.lower()
    negatives = ("not buggy", "no bug", "not a clone", "not clones", "not equivalent", "is correct", "different")
    positives = ("buggy", "has a bug", "contains a bug", "is a clone", "are clones", "equivalent", "same")
    if any(n in lowered for n in negatives):
        return False
    if any(p in lowered for p in positives):
        return True
    return None


def suite_problems(suite: Suite, run: RunSettings) -> list[Problem]:
    """The problems a run of ``suite`` poses: all of them, or the first ``run.limit``."""
    problems = suite.problems(run.seed)
    if not problems:
        raise SuiteError(f"suite {suite.name!r} has no problems here")
    if run.limit is not None:
        if run.limit < 1 or run.limit > len(problems):
            raise SuiteError(
                f"eval.suite_limit={run.limit} for suite {suite.name!r}, which has {len(problems)} problems; "
                f"valid: 1..{len(problems)} (or null for all)"
            )
        problems = problems[: run.limit]
    return problems


def run_suite(suite: Suite, ask: Ask, run: RunSettings) -> SuiteResult:
    """Run ``suite`` with the model behind ``ask``: its problems (up to ``run.limit``), ``run.samples``
    completions each, every one judged; pass@k (execution) or accuracy (YES/NO) over problem groups."""
    try:
        check_ks(run.ks, run.samples)
    except ValueError as err:
        raise SuiteError(str(err)) from None
    problems = suite_problems(suite, run)
    start = time.monotonic()
    solved = suite.solve(problems, ask, run)
    generated = time.monotonic()
    samples = judge(suite, problems, solved, run)
    metrics = score(suite, problems, samples, run)
    metrics["generate_seconds"] = generated - start
    metrics["judge_seconds"] = time.monotonic() - generated
    return SuiteResult(suite.name, metrics, samples)


def judge(
    suite: Suite, problems: Sequence[Problem], solved: Sequence[tuple[str, list[str]]], run: RunSettings
) -> list[Sample]:
    """A verdict for every completion: by execution in the sandbox (all in parallel) or as a YES/NO answer."""
    flat = [(p, prompt, i, c) for p, (prompt, cs) in zip(problems, solved, strict=True) for i, c in enumerate(cs)]
    if suite.scoring == "yesno":
        out = []
        for p, prompt, i, c in flat:
            said = answer_of(c)
            status = "unparsed" if said is None else ("correct" if said == p.answer else "wrong")
            out.append(Sample(p.task_id, i, prompt, c, status == "correct", status))
        return out
    results = run_programs([suite.program(p, c) for p, _, _, c in flat], run.sandbox, workers=run.workers)
    return [
        Sample(p.task_id, i, prompt, c, r.passed, r.status, r.detail)
        for (p, prompt, i, c), r in zip(flat, results, strict=True)
    ]


def score(suite: Suite, problems: Sequence[Problem], samples: Sequence[Sample], run: RunSettings) -> dict[str, float]:
    """pass@k over groups (a sample index passes a group only if it passes on every member), plus counts."""
    by_task: dict[str, list[bool]] = {}
    for s in samples:
        by_task.setdefault(s.task_id, [False] * run.samples)[s.index] = s.passed
    groups: dict[str, list[bool]] = {}
    for p in problems:
        verdicts = by_task[p.task_id]
        held = groups.setdefault(p.group_id, [True] * run.samples)
        groups[p.group_id] = [a and b for a, b in zip(held, verdicts, strict=True)]
    counts = [(run.samples, sum(v)) for v in groups.values()]
    metrics: dict[str, float] = {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) for k in run.ks}
    if suite.scoring == "yesno":
        metrics["accuracy"] = sum(s.passed for s in samples) / len(samples)
        metrics["unparsed"] = sum(s.status == "unparsed" for s in samples) / len(samples)
    metrics["problems"] = len(groups)
    metrics["samples"] = len(samples)
    metrics["empty_completions"] = sum(not s.completion.strip() for s in samples)
    return metrics
