"""The built-in code corpus: functions harvested from the running interpreter's standard library.

Notable choices:
- Source is read with ``ast`` (never imported), so harvesting runs no stdlib code and works offline.
- Test suites, demos, IDLE, tkinter, lib2to3 and site-packages are skipped: they are either not
  representative library code or not shipped everywhere.
- Order is deterministic (sorted paths, then source order) and exact duplicate functions are dropped,
  so the same interpreter always yields the same records.
- The harvest is cached as JSON Lines under the fedpeft cache directory, keyed by the Python version.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from fedpeft.paths import atomic_write_text, cache_dir

SKIPPED_TOP_LEVEL = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "ensurepip",
        "site-packages",
        "dist-packages",
        "config-3",
        "__pycache__",
        "venv",
        "pydoc_data",
        "turtle.py",
        "this.py",
        "antigravity.py",
    }
)
HARVEST_VERSION = 1


@dataclass(frozen=True)
class FunctionRecord:
    """One function (or method) from the standard library."""

    module: str
    """Top-level module or package name: the natural client id ("email", "asyncio", ...)."""
    qualname: str
    """Dotted module path plus class and function name, e.g. ``json.decoder.JSONDecoder.decode``."""
    signature: str
    """The ``def`` line(s) as written, decorators excluded."""
    docstring: str
    """The cleaned docstring (``inspect.cleandoc`` rules)."""
    body: str
    """The function body without its docstring, dedented to column 0."""
    code: str
    """The whole function source, dedented."""
    path: str
    """Path relative to the stdlib directory."""
    line: int


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _iter_source_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if rel.parts and (rel.parts[0] in SKIPPED_TOP_LEVEL or rel.parts[0].startswith("config-")):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_TOP_LEVEL and d not in {"test", "tests"})
        for name in sorted(filenames):
            if name.endswith(".py") and not (not rel.parts and name in SKIPPED_TOP_LEVEL):
                yield Path(dirpath) / name


def _module_path(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Module-level functions and methods of module-level classes, with their qualified names."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{item.name}", item


def _dedent_block(lines: list[str]) -> str:
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents) if indents else 0
    return "\n".join(line[cut:] if line.strip() else "" for line in lines).strip("\n")


def _record(source_lines: list[str], module_path: str, rel: Path, qual: str, node) -> FunctionRecord | None:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring or len(node.body) < 2:
        return None
    doc_node = node.body[0]
    first_body = node.body[1]
    start = node.lineno - 1
    end = node.end_lineno
    sig_end = node.body[0].lineno - 1
    signature = _dedent_block(source_lines[start:sig_end])
    body_start = first_body.lineno - 1
    # Comments between the docstring and the first statement belong to the body.
    body_start = min(body_start, doc_node.end_lineno)
    body = _dedent_block(source_lines[body_start:end])
    code = _dedent_block(source_lines[start:end])
    if not body.strip() or not signature.startswith(("def ", "async def ")):
        return None
    return FunctionRecord(
        module=module_path.split(".")[0],
        qualname=f"{module_path}.{qual}",
        signature=signature,
        docstring=docstring,
        body=body,
        code=code,
        path=str(rel),
        line=node.lineno,
    )


def harvest(root: Path | None = None) -> list[FunctionRecord]:
    """Parse every library source file under ``root`` and return its documented functions."""
    root = root or stdlib_dir()
    records: list[FunctionRecord] = []
    seen: set[str] = set()
    for path in _iter_source_files(root):
        rel = path.relative_to(root)
        try:
            text = path.read_text(encoding="utf-8")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(text)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = text.splitlines()
        module_path = _module_path(rel)
        for qual, node in _functions(tree):
            rec = _record(lines, module_path, rel, qual, node)
            if rec is None:
                continue
            digest = hashlib.sha1(rec.code.encode()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            records.append(rec)
    return records


def _cache_path() -> Path:
    tag = f"py{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}-v{HARVEST_VERSION}"
    return cache_dir() / "corpus" / f"stdlib-{tag}.jsonl"


def load_stdlib_corpus(modules: Iterable[str] | None = None) -> list[FunctionRecord]:
    """The harvested corpus (cached after the first call), optionally restricted to top-level modules."""
    path = _cache_path()
    if path.exists():
        with path.open(encoding="utf-8") as fh:
            records = [FunctionRecord(**json.loads(line)) for line in fh]
    else:
        records = harvest()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(asdict(rec)) + "\n" for rec in records))
    if modules is not None:
        wanted = set(modules)
        records = [r for r in records if r.module in wanted]
    return records


SPLIT_PERCENT = {"train": 90, "valid": 5, "test": 5}


def corpus_split(rec: FunctionRecord) -> str:
    """The record's fixed split, from a hash of its qualified name: stable across machines and Python
    versions, so the built-in model's pretraining ('train' only) never sees an evaluation row."""
    bucket = int(hashlib.sha1(rec.qualname.encode()).hexdigest()[:8], 16) % 100
    if bucket < SPLIT_PERCENT["train"]:
        return "train"
    return "valid" if bucket < SPLIT_PERCENT["train"] + SPLIT_PERCENT["valid"] else "test"


def corpus_report(records: list[FunctionRecord]) -> dict[str, int]:
    """Functions per top-level module, largest first."""
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.module] = counts.get(rec.module, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
