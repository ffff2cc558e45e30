"""``stdlib-doctest``: write the body of a held-out standard-library function; its own doctests judge it.

The problems are the functions of the stdlib corpus's held-out split (``corpus_split(rec) == "test"``) whose
docstrings carry doctests (``>>>``). The model sees the ``def`` line and the docstring, exactly as written in
the library (a method is shown inside a ``class <Name>:`` header so that it is indented and its private names
mangle as in the original), and continues with the body (``join="continue"``).

Notable choices:
- The sample's program imports the function's real module, executes the solution with that module's globals
  (so helpers, constants and imports resolve), puts the new function in place of the library's (on its class
  for a method, keeping ``staticmethod``/``classmethod``), then runs the docstring's doctests with
  :mod:`doctest` against a copy of the module's globals; a failed or missing example exits non-zero. Functions
  whose library object is decorated some other way (``functools.cache``, ``property``, ...) cannot be put
  back faithfully and are refused by the program itself.
- A problem is kept only if it is sound here: a static filter (the docstring ends its line, the canonical
  body survives the stop sequences), then a sandbox self-check that the canonical body passes *and* that the
  docstring-only body (``return None``) fails, so every kept problem can tell a right body from none. The
  self-check's verdicts are cached as JSON next to the harvested corpus, keyed by the Python version, the
  harvest version and :data:`CHECK_VERSION`; listing is then a file read. A run in which the sandbox did not
  give a definite verdict (an error or a timeout) is used but not cached. The candidates themselves are built
  once per process.
- Needs nothing but the interpreter: the corpus is the running interpreter's own library.
"""

from __future__ import annotations

import ast
import functools
import json
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fedpeft.data.stdlib_corpus import HARVEST_VERSION, FunctionRecord, corpus_split, load_stdlib_corpus
from fedpeft.evaluation.sandbox import SandboxLimits, run_programs
from fedpeft.evaluation.suites import SUITES
from fedpeft.evaluation.suites.base import HUMANEVAL_STOP, Problem, Suite, cut, solution
from fedpeft.paths import atomic_write_text, cache_dir

CHECK_VERSION = 1
"""Bump when the program or the filters change, so cached self-checks are recomputed."""

SPLIT = "test"
SELF_CHECK_LIMITS = SandboxLimits(timeout_s=20.0, cpu_s=10, memory_mb=1024)
"""The self-check's limits: the default evaluation limits' CPU and memory, a longer wall clock for a loaded
machine (a timeout is not cached anyway)."""

_PROGRAM = """\
import doctest
import importlib
import sys
import types

_module = importlib.import_module({module!r})
_namespace = {{}}
exec(compile({solution!r}, {filename!r}, "exec"), _module.__dict__, _namespace)
_owner, _name = {owner!r}, {name!r}
_target = _module if _owner is None else getattr(_module, _owner)
_new = _namespace[_name] if _owner is None else _namespace[_owner].__dict__[_name]
_old = vars(_target).get(_name)
_wrap = type(_old) if isinstance(_old, (staticmethod, classmethod)) else None
_old_function = _old.__func__ if _wrap is not None else _old
if not isinstance(_old_function, types.FunctionType) or hasattr(_old_function, "__wrapped__"):
    raise SystemExit(f"{{_name}} is not a plain function in {{_module.__name__}}; it cannot be replaced")
setattr(_target, _name, _wrap(_new) if _wrap is not None else _new)
_test = doctest.DocTestParser().get_doctest(
    {docstring!r}, dict(_module.__dict__), {qualname!r}, {path!r}, {line!r}
)
_failed, _attempted = doctest.DocTestRunner(verbose=False).run(_test, out=sys.stderr.write)
if _failed or not _attempted:
    raise SystemExit(f"{{_failed}} of {{_attempted}} doctest examples failed")
"""


@dataclass(frozen=True)
class DoctestTarget:
    """Where a harvested function lives: its module's import path, its class (if a method) and its name."""

    module: str
    owner: str | None
    name: str


def module_of(rec: FunctionRecord) -> str:
    """The import path of the module a record was harvested from (``json/encoder.py`` -> ``json.encoder``)."""
    parts = list(PurePosixPath(Path(rec.path).as_posix()).with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def target_of(rec: FunctionRecord) -> DoctestTarget | None:
    """The record's module, class and name, or None when its qualified name is not module.[Class.]name."""
    module = module_of(rec)
    if not rec.qualname.startswith(module + "."):
        return None
    qual = rec.qualname[len(module) + 1 :].split(".")
    if len(qual) == 1:
        return DoctestTarget(module, None, qual[0])
    if len(qual) == 2:
        return DoctestTarget(module, qual[0], qual[1])
    return None


def split_at_body(rec: FunctionRecord, owner: str | None) -> tuple[str, str] | None:
    """(prompt: the ``def`` line(s) and docstring, canonical: the body), both indented as in the library, or
    None when the function's source cannot be split cleanly there."""
    try:
        tree = ast.parse(rec.code)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    doc = tree.body[0].body[0]
    lines = rec.code.split("\n")
    if doc.end_lineno is None or doc.end_col_offset is None or lines[doc.end_lineno - 1][doc.end_col_offset :].strip():
        return None
    head, body = "\n".join(lines[: doc.end_lineno]) + "\n", "\n".join(lines[doc.end_lineno :]).rstrip() + "\n"
    if owner is not None:
        head = f"class {owner}:\n" + textwrap.indent(head, "    ")
        body = textwrap.indent(body, "    ")
    return head, body


def doctest_program(problem: Problem, completion: str) -> str:
    """The sandbox program for one completion: define it in its module, run the docstring's doctests."""
    meta = problem.meta
    return _PROGRAM.format(
        module=meta["module"],
        solution=solution(problem, completion),
        filename=f"<{problem.task_id}>",
        owner=meta["owner"],
        name=meta["name"],
        docstring=meta["docstring"],
        qualname=meta["qualname"],
        path=meta["path"],
        line=meta["line"],
    )


@functools.cache
def candidate_problems() -> tuple[Problem, ...]:
    """Every held-out function with doctests that passes the static filter, in corpus order (not yet
    self-checked; built once per process)."""
    problems = []
    seen: set[str] = set()
    for rec in load_stdlib_corpus():
        if corpus_split(rec) != SPLIT or ">>>" not in rec.docstring:
            continue
        target = target_of(rec)
        parts = split_at_body(rec, target.owner) if target is not None else None
        if target is None or parts is None:
            continue
        prompt, canonical = parts
        if cut(canonical, HUMANEVAL_STOP) != canonical or rec.qualname in seen:
            continue  # a second function of one name (a property's setter) would shadow the first
        seen.add(rec.qualname)
        where = f"method `{target.name}` of class `{target.owner}`" if target.owner else f"function `{target.name}`"
        problems.append(
            Problem(
                task_id=f"stdlib-doctest/{rec.qualname}",
                prompt=prompt,
                instruction=(
                    f"Write the body of the Python {where} in the standard-library module `{target.module}`, "
                    f"so that it does what its docstring says and passes the docstring's examples.\n"
                    f"{rec.docstring}"
                ),
                entry_point=target.name,
                canonical=canonical,
                meta={
                    "module": target.module,
                    "owner": target.owner,
                    "name": target.name,
                    "qualname": rec.qualname,
                    "docstring": rec.docstring,
                    "path": rec.path,
                    "line": rec.line,
                },
            )
        )
    return tuple(problems)


def self_check_path() -> Path:
    """Where the self-check's verdicts are cached: beside the harvested corpus, keyed like it."""
    v = sys.version_info
    tag = f"py{v.major}.{v.minor}.{v.micro}-v{HARVEST_VERSION}-c{CHECK_VERSION}"
    return cache_dir() / "corpus" / f"stdlib-doctest-{tag}.json"


def self_check(problems: Sequence[Problem]) -> dict[str, str]:
    """A verdict per task id: ``ok``, or why the problem is dropped. Runs the canonical and the empty body of
    every problem in the sandbox (cached; see the module docstring)."""
    path = self_check_path()
    if path.exists():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if set(cached) >= {p.task_id for p in problems}:
            return cached
    programs = [doctest_program(p, c) for p in problems for c in (p.canonical, "")]
    results = run_programs(programs, SELF_CHECK_LIMITS)
    verdicts: dict[str, str] = {}
    definite = True
    for i, p in enumerate(problems):
        canonical, empty = results[2 * i], results[2 * i + 1]
        definite &= all(r.status in ("passed", "failed") for r in (canonical, empty))
        if not canonical.passed:
            verdicts[p.task_id] = f"canonical body {canonical.status}: {canonical.detail[-300:]}"
        elif empty.passed:
            verdicts[p.task_id] = "the docstring-only body passes too: the doctests do not test the body"
        else:
            verdicts[p.task_id] = "ok"
    if definite:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(verdicts, indent=1, sort_keys=True) + "\n")
    return verdicts


@SUITES.register("stdlib-doctest")
class StdlibDoctest(Suite):
    """Held-out stdlib functions with doctests: write the body from signature and docstring, pass the doctests."""

    def problems(self, seed: int) -> list[Problem]:
        candidates = candidate_problems()
        verdicts = self_check(candidates)
        return [p for p in candidates if verdicts.get(p.task_id) == "ok"]

    def program(self, problem: Problem, completion: str) -> str:
        return doctest_program(problem, completion)
