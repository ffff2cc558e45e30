"""The base class of every error fedpeft reports to its user.

A leaf module any layer may import. Each layer keeps its own error classes (``ConfigError``,
``DataSourceError``, ``ModelLoadError``, ...) next to the code that raises them, deriving from
:class:`FedpeftError`; the CLI catches this one class and prints its message, with no traceback.
Anything else that escapes is a bug in fedpeft, and is shown as one.
"""

from __future__ import annotations


class FedpeftError(Exception):
    """A problem the user can fix: its message names the offending key, file or node and what would be valid."""

    exit_code: int = 2
    """The CLI's exit status for it."""
