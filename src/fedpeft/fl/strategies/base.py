"""The server-side strategy API and its registry.

A strategy turns the global trainable state and this round's client updates into the next global state.
Everything it needs arrives as arguments; whatever it keeps between rounds (server optimizer moments,
control variates) is an explicit field returned by ``state_dict`` so that checkpoints hold it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.tensors import TensorDict


class Strategy(ABC):
    name: ClassVar[str]

    @abstractmethod
    def aggregate(self, global_state: TensorDict, updates: Sequence[ClientUpdate], server_round: int) -> TensorDict:
        """The next global state."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state but the checkpoint has {sorted(state)}")


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def register(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered by {STRATEGIES[name].__qualname__}")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return register


def build_strategy(name: str, **kwargs: Any) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown fl.strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](**kwargs)
