"""Server strategies, one module each, registered by name on import."""

from fedpeft.fl.strategies import (  # noqa: F401  (each module registers its strategies)
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedprox,
    fedyogi,
    robust,
)
from fedpeft.fl.strategies.base import (
    STRATEGIES,
    Strategy,
    build_strategy,
    describe_strategies,
    register_strategy,
)

__all__ = ["STRATEGIES", "Strategy", "build_strategy", "describe_strategies", "register_strategy"]
