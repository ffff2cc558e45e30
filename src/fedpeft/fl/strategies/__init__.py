"""Server strategies, one module each, registered by name when this package imports every module in it:
adding a strategy is adding its file (and its case in tests/unit/test_strategy_registry.py)."""

from fedpeft.fl.strategies.base import (
    STRATEGIES,
    Aggregate,
    Mixing,
    PersonalisedStrategy,
    ServerContext,
    Strategy,
    build_strategy,
    describe_strategies,
    register_strategy,
)
from fedpeft.registry import import_parts

import_parts(__name__, __path__, shared=("base", "state"))

__all__ = [
    "STRATEGIES",
    "Aggregate",
    "Mixing",
    "PersonalisedStrategy",
    "ServerContext",
    "Strategy",
    "build_strategy",
    "describe_strategies",
    "register_strategy",
]
