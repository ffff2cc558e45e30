"""Server strategies, one module each, registered by name."""

from fedpeft.fl.strategies import fedavg  # noqa: F401  (registers "fedavg")
from fedpeft.fl.strategies.base import STRATEGIES, Strategy, build_strategy, register_strategy

__all__ = ["STRATEGIES", "Strategy", "build_strategy", "register_strategy"]
