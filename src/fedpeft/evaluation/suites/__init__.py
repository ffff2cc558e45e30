"""Code-evaluation suites, one file each, registered by name (``fedpeft suites`` lists them).

Importing this package imports every suite module, so a new suite is one new file."""

from __future__ import annotations

from fedpeft.evaluation.suites.base import (
    PROMPT_FORMATS,
    Ask,
    Problem,
    RunSettings,
    Sample,
    Suite,
    SuiteError,
    SuiteResult,
    run_suite,
    suite_problems,
)
from fedpeft.registry import Registry, import_parts

SUITES: Registry[type[Suite]] = Registry("code-evaluation suite", "eval.suites")

import_parts(__name__, __path__, shared=("base",))


def get_suite(name: str) -> type[Suite]:
    """The suite registered as ``name`` (an error lists the valid names)."""
    return SUITES.get(name)


__all__ = [
    "PROMPT_FORMATS",
    "SUITES",
    "Ask",
    "Problem",
    "RunSettings",
    "Sample",
    "Suite",
    "SuiteError",
    "SuiteResult",
    "get_suite",
    "run_suite",
    "suite_problems",
]
