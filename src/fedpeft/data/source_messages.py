"""Messages of :mod:`fedpeft.data.sources` re-addressed to another setting or file, and redacted.

A client's file is read by the same code as ``data.source``, whose messages open with ``data.source '<file>'``;
:func:`readdressed` makes them open with the caller's ``where``. A node's message travels to the server, so
with ``redact`` it is rebuilt from the parts of the original that cannot hold the file's content (line and row
numbers, the schema's column names, the kind of problem), and a message of a shape not known here is replaced
by a generic one rather than passed on.
"""

from __future__ import annotations

import re

from fedpeft.data.sources import SCHEMAS, DataSourceError

_JSON_ROW = '{{"column": value, ...}}'  # in str.format templates

# Messages of fedpeft.data.sources after their "data.source '<file>'" prefix: the pattern, and the redacted
# message built from its groups alone (never from the text between them, which may quote the file).
_SAFE_GROUP = re.compile(r"[\w .',:\\()-]{0,80}")
_REDACTED: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r" line (\d+) is not UTF-8 text"), " line {0} is not UTF-8 text; save the file as UTF-8"),
    (
        re.compile(r" line (\d+) holds NUL bytes"),
        " line {0} holds NUL bytes (UTF-16 text, or not text at all); save the file as UTF-8",
    ),
    (re.compile(r" ends inside a UTF-8 character"), " ends inside a UTF-8 character; save it as UTF-8"),
    (
        re.compile(r" line (\d+) \(.*\) is not a JSON object", re.S),
        f" line {{0}} is not a JSON object: each line of a .jsonl file is one row, {_JSON_ROW}",
    ),
    (
        re.compile(r" opens with .*, not an array of rows", re.S),
        f" does not open an array of rows: a .json file holds [{_JSON_ROW}, ...] (or one such object per line)",
    ),
    (
        re.compile(r" item (\d+) of its array is (\w+), not an object"),
        f" item {{0}} of its array is {{1}}, not an object: a .json file holds [{_JSON_ROW}, ...]",
    ),
    (
        re.compile(r" line (\d+) is not valid JSON \((.*) at column (\d+)\)$"),
        " line {0} is not valid JSON ({1} at column {2})",
    ),
    (
        re.compile(r" line (\d+) is (\w+), not a JSON object"),
        f" line {{0}} is {{1}}, not a JSON object: each line is one row, {_JSON_ROW}",
    ),
    (
        re.compile(r" is not a readable (\.\w+) file"),
        " is not a readable {0} file (the parser's message is withheld, as it may quote the file; load the file "
        "as data.source on its own machine to see it)",
    ),
    (re.compile(r" has no rows"), " has no rows"),
]
_MISSING_COLUMNS = re.compile(r" lacks column\(s\) \[(.*?)\] of the '([\w-]+)' schema")
_BAD_VALUE = re.compile(
    r" row (\d+)( \(and \d+ more row\(s\)\))?: column '(\w+)' is .*; the '([\w-]+)' schema needs", re.S
)


def _redact(tail: str) -> str | None:
    """The content-free form of a sources message (after its prefix), or None if its shape is unknown."""
    for pattern, redacted in _REDACTED:
        found = pattern.match(tail)
        if found and all(_SAFE_GROUP.fullmatch(g or "") for g in found.groups()):
            return redacted.format(*found.groups())
    found = _MISSING_COLUMNS.match(tail)
    if found and found.group(2) in SCHEMAS:
        columns = SCHEMAS[found.group(2)].columns
        missing = re.findall(r"'([^']*)'", found.group(1))
        if missing and all(c in columns for c in missing):
            return f" lacks column(s) {missing} of the {found.group(2)!r} schema; it needs: {', '.join(columns)}"
    found = _BAD_VALUE.match(tail)
    if found and found.group(4) in SCHEMAS and found.group(3) in SCHEMAS[found.group(4)].columns:
        column = SCHEMAS[found.group(4)].columns[found.group(3)]
        return (
            f" row {found.group(1)}{found.group(2) or ''}: column {found.group(3)!r} is not {column.description}, "
            f"which the {found.group(4)!r} schema needs"
        )
    return None


def readdressed(err: DataSourceError, source: str, where: str, schema: str, redact: bool) -> DataSourceError:
    """``err`` from :func:`load_source_rows` about ``source``, as a message that starts with ``where``."""
    message, prefix = str(err), f"data.source {source!r}"
    tail = message[len(prefix) :] if message.startswith(prefix) else f": {message}"
    if redact:
        tail = _redact(tail) or f" could not be read as a {schema!r} file"
    return DataSourceError(f"{where}{tail}")
