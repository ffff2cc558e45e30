"""Server strategies, one module each, registered by name on import."""

from fedpeft.fl.strategies import (  # noqa: F401  (each module registers its strategies)
    baselines,
    dp_fedavg,
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedkd,
    fedprox,
    fedyogi,
    robust,
    scaffold,
    trust,
)
from fedpeft.fl.strategies.base import (
    STRATEGIES,
    PersonalisedStrategy,
    ServerContext,
    Strategy,
    build_strategy,
    describe_strategies,
    register_strategy,
)

__all__ = [
    "STRATEGIES",
    "PersonalisedStrategy",
    "ServerContext",
    "Strategy",
    "build_strategy",
    "describe_strategies",
    "register_strategy",
]
