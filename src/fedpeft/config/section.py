"""The base of every configuration section: unknown keys are errors, values are frozen, no NUL characters;
and the checks shared by fields that name files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

PATH_MAX = 4096
"""Longest name or path a field that names a file, directory or model takes (Linux's PATH_MAX)."""


def known_home(path: str) -> str:
    """A path starting with ``~user`` names a user this machine knows (else expanding it fails later)."""
    if path.startswith("~"):
        try:
            Path(path).expanduser()
        except RuntimeError:
            raise ValueError("starts with the home directory of an unknown user") from None
    return path


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True, allow_inf_nan=False
    )

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("contains a NUL character (\\x00), which no name, path or setting may")
        return v
