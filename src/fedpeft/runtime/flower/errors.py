"""The Flower runtime's errors, importable from one place (``fedpeft.runtime.flower``): a round that fails
(:class:`FlowerRoundError`, raised here) and a SuperLink that cannot be reached or submitted to
(:class:`FlowerConnectionError`, raised by :mod:`fedpeft.deploy`, which owns it)."""

from __future__ import annotations

from fedpeft.deploy import FlowerConnectionError
from fedpeft.errors import FedpeftError

__all__ = ["FlowerConnectionError", "FlowerRoundError"]


class FlowerRoundError(FedpeftError, RuntimeError):
    """A Flower round, or finding the clients' nodes, failed."""
