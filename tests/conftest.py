"""Test-wide settings: an isolated fedpeft cache per session and no hub access."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Harvested corpus and built-in models go to a fresh directory, so tests never read a stale cache."""
    previous = os.environ.get("FEDPEFT_CACHE")
    os.environ["FEDPEFT_CACHE"] = str(tmp_path_factory.mktemp("fedpeft-cache"))
    yield
    if previous is None:
        os.environ.pop("FEDPEFT_CACHE", None)
    else:
        os.environ["FEDPEFT_CACHE"] = previous
