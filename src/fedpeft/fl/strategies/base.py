"""The server-side strategy API and its registry.

A strategy turns the global trainable state and this round's client updates into the next global state.
Everything it needs arrives as arguments and everything it finds comes back as the result: no call order,
no results left in attributes. Whatever it keeps between rounds (server optimiser moments, control
variates, a teacher) is an explicit field returned by ``state_dict`` (:mod:`.state` flattens it) so that
checkpoints hold it. A strategy that changes local training (a proximal term, a gradient correction)
returns a :class:`ClientHook` from ``client_hook``; the client round applies it without knowing which
strategy asked. The arithmetic itself lives in :mod:`fedpeft.tensors` as pure functions; a strategy's
methods are the glue.

One ``kind`` says how a strategy's round runs:
- ``global``: ``aggregate(global_state, updates, server_round, context) -> Aggregate``, one next global
  state from the updates with the round's figures attached (a strategy implements ``aggregate_updates``);
- ``personalised`` (:class:`PersonalisedStrategy`): each client keeps its own state and
  ``mixing_weights(updates, server_round, context) -> Mixing(weights, figures)`` gives an n x n matrix W
  whose row i mixes the round's updates into client i's next state (FedAvg is W with identical rows;
  training alone is the identity);
- ``pooled`` (the centralised baseline): the run trains one model on the union of the sampled clients'
  data and the strategy receives that one update.
Three traits a kind cannot express stay class flags: ``stackable``, ``communicates`` and
``hook_reads_server_state``. What a strategy needs beyond the updates (server data, a model to score states
with) is the run's :class:`ServerContext`, passed to every call that uses it; ``bind`` checks it once before
round 1 (``check_context``: a ValueError naming what is missing).

Called without a context (the first API's shape: ``aggregate(global_state, updates, server_round)``,
``mixing_matrix(updates, server_round)``), a strategy uses the context given to ``bind``;
``round_figures()`` still returns the figures of the last ``aggregate`` call for callers of that API.

Each strategy has a small frozen ``Settings`` dataclass whose fields carry their help in
``metadata["help"]``; ``fl.strategy_args`` in a recipe is checked against it before round 1.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch

from fedpeft.fl.client_round import ClientHook, ClientUpdate, LocalTrainingArgs
from fedpeft.registry import NoSettings, Registry, parse_settings, setting
from fedpeft.tensors import TensorDict
from fedpeft.tensors.batching import TokenizedExample

__all__ = [
    "STRATEGIES",
    "Aggregate",
    "Mixing",
    "NoSettings",
    "PersonalisedStrategy",
    "ServerContext",
    "Strategy",
    "StrategyKind",
    "build_strategy",
    "describe_strategies",
    "register_strategy",
    "setting",
]

StrategyKind = Literal["global", "personalised", "pooled"]


@dataclasses.dataclass
class ServerContext:
    """What the run lends a strategy beyond the clients' updates. Built once by the experiment, so strategy
    code needs no evaluation or data code of its own; every model function takes the trainable state to
    score (loaded into the one shared model) and leaves the model's state undefined afterwards."""

    model: torch.nn.Module
    args: LocalTrainingArgs
    seed: int
    server_data: Sequence[TokenizedExample]
    """Public rows the server holds (``data.server_fraction``); may be empty."""
    client_val: Mapping[int, Sequence[TokenizedExample]]
    client_categories: Mapping[int, Mapping[str, int]]
    loss: Callable[[TensorDict, Sequence[TokenizedExample]], float]
    """Mean evaluation loss (per target token or example) of the model with a state on some examples."""
    probabilities: Callable[[TensorDict, Sequence[TokenizedExample]], torch.Tensor]
    """(scored positions x outputs) probabilities: next-token distributions at response tokens, or class
    probabilities per example."""
    lora_aggregation: str = "separate"
    heterogeneous_ranks: bool = False
    """Clients train LoRA adapters of different ranks (``peft.client_ranks``)."""
    sample_rate: float = 1.0
    """Clients sampled per round / clients (privacy accounting)."""
    client_rows_on_server: bool = True
    """The server holds the clients' rows (a simulation, a rehearsal on one shared source). False when each
    client keeps its own file on its node: then ``client_val`` and ``client_categories`` are empty, and a
    strategy that would score or count clients' rows on the server must refuse the run."""


class Aggregate(dict[str, torch.Tensor]):
    """A global strategy's round: the next global state, which is this mapping of tensors (so it goes
    wherever a state goes), and the round's figures for its log record, ``figures``."""

    def __init__(self, state: Mapping[str, torch.Tensor], figures: Mapping[str, float] | None = None):
        super().__init__(state)
        self.figures: dict[str, float] = dict(figures or {})

    @property
    def state(self) -> TensorDict:
        """The next global state as a plain dict."""
        return dict(self)


@dataclasses.dataclass(frozen=True)
class Mixing:
    """A personalised strategy's round: the (n x n) non-negative mixing weights for the round's n updates,
    in their order, and figures for the round's log record."""

    weights: torch.Tensor
    figures: dict[str, float] = dataclasses.field(default_factory=dict)


class _IsKind:
    """A read-only flag, on the class and its instances, that is true for strategies of one kind (the
    ``personalised`` and ``pools_data`` flags of the first API)."""

    def __init__(self, kind: StrategyKind):
        self.kind = kind

    def __get__(self, instance: Any, owner: type) -> bool:
        return owner.kind == self.kind

    def __set__(self, instance: Any, value: Any) -> None:
        raise AttributeError(f"set the strategy's kind (kind = {self.kind!r}), not this flag")


class Strategy(ABC):
    name: ClassVar[str]
    Settings: ClassVar[type] = NoSettings
    kind: ClassVar[StrategyKind] = "global"
    """How its round runs: global, personalised or pooled (see the module's docstring)."""
    hook_reads_server_state: ClassVar[bool] = False
    """Its ``client_hook`` needs state only the server holds (SCAFFOLD's control variates), so a client
    that rebuilds the strategy from the configuration (the Flower runtime) cannot apply it."""
    stackable: ClassVar[bool] = False
    """Aggregates LoRA pairs by the example-weighted mean, so ``fl.lora_aggregation=stack`` can stand in."""
    communicates: ClassVar[bool] = True
    """False for baselines that exchange nothing (training alone, pooled data): their rounds count 0 bytes."""

    personalised = _IsKind("personalised")
    """kind == "personalised" (read-only)."""
    pools_data = _IsKind("pooled")
    """kind == "pooled" (read-only)."""

    def __init__(self, settings: Any = None):
        self.settings = settings if settings is not None else self.Settings()
        self._bound_context: ServerContext | None = None
        self._last_figures: dict[str, float] = {}

    def aggregate(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        """The next global state with the round's figures (:meth:`aggregate_updates`); without ``context``,
        the one given to :meth:`bind`."""
        result = self.aggregate_updates(global_state, updates, server_round, self.context_for(context))
        self._last_figures = dict(result.figures)
        return result

    @abstractmethod
    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        """What a strategy implements: the next global state and the round's figures from everything passed
        in. ``context`` is the run's (None in tests of strategies that need none)."""

    def check_round_size(self, n_clients: int) -> None:
        """Raise ValueError if rounds of ``n_clients`` updates would make this strategy degenerate."""
        return None

    def check_context(self, context: ServerContext) -> None:
        """Raise ValueError naming the missing setting if this strategy cannot work with the run."""
        return None

    def bind(self, context: ServerContext) -> None:
        """The preflight check against a built run (:meth:`check_context`), called after setup has built the
        model and data, before round 1. The context is remembered for the first API's methods only."""
        self.check_context(context)
        self._bound_context = context

    def context_for(self, context: ServerContext | None) -> ServerContext | None:
        """``context``, or the one given to :meth:`bind` when None (callers of the first API pass none)."""
        return context if context is not None else self._bound_context

    def require_context(self, context: ServerContext | None) -> ServerContext:
        """``context`` (or the bound one); a RuntimeError if there is neither."""
        found = self.context_for(context)
        if found is None:
            raise RuntimeError(f"{self.name} must be bound to the run (Strategy.bind) before it aggregates")
        return found

    def client_hook(self, client_id: int, global_state: TensorDict) -> ClientHook | None:
        """What the client round must add to local training for this strategy (None: nothing)."""
        return None

    def extra_payload_bytes(self, global_state: TensorDict, transport: torch.dtype | None = None) -> int:
        """Bytes a client exchanges per direction besides its trainable state (e.g. control variates),
        floating-point tensors counted at ``transport`` if given."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        """What the strategy keeps between rounds, flat (see :func:`.state.pack_state`)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state but the checkpoint has {sorted(state)}")

    def round_figures(self) -> dict[str, float]:
        """The figures of the last :meth:`aggregate` call, for callers of the first API (the result carries
        them as ``figures``)."""
        return dict(self._last_figures)


class PersonalisedStrategy(Strategy):
    """Each client keeps its own state; after a round, client i's state becomes sum_j W[i, j] theta_j over
    the round's updates (rows of W are normalised by :func:`fedpeft.tensors.aggregate.mix_states`)."""

    kind: ClassVar[StrategyKind] = "personalised"

    @abstractmethod
    def mixing_weights(
        self, updates: Sequence[ClientUpdate], server_round: int, context: ServerContext | None = None
    ) -> Mixing:
        """(n x n) non-negative weights for the round's n updates, in their order, and the round's figures."""

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        raise TypeError(f"strategy {self.name!r} is personalised: it returns a mixing matrix, not one global state")

    def mixing_matrix(self, updates: Sequence[ClientUpdate], server_round: int) -> torch.Tensor:
        """The mixing weights with the context given to :meth:`bind` (first API; prefer :meth:`mixing_weights`)."""
        return self.mixing_weights(updates, server_round, self._bound_context).weights


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "fl.strategy")


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a strategy under ``name`` (a duplicate name is a ValueError)."""
    return STRATEGIES.register(name)


def build_strategy(name: str, args: Mapping[str, Any] | None = None) -> Strategy:
    """The strategy ``name`` with its settings from ``args`` (``fl.strategy_args``), checked."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown fl.strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}")
    cls = STRATEGIES.get(name)
    return cls(parse_settings("fl.strategy_args", name, "strategy", cls.Settings, args or {}))


def describe_strategies() -> list[tuple[str, str, list[tuple[str, Any, str]]]]:
    """(name, one-line summary, [(setting, default, help)]) for every registered strategy."""
    return STRATEGIES.describe()
