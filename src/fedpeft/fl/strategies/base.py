"""The server-side strategy API and its registry.

A strategy turns the global trainable state and this round's client updates into the next global state.
Everything it needs arrives as arguments; whatever it keeps between rounds (server optimizer moments,
control variates) is an explicit field returned by ``state_dict`` so that checkpoints hold it. A strategy
that changes local training (a proximal term, a gradient correction) returns a :class:`ClientHook` from
``client_hook``; the client round applies it without knowing which strategy asked.

Three kinds share the API:
- global strategies (``aggregate``): one next global state from the updates;
- personalised strategies (:class:`PersonalisedStrategy`, ``mixing_matrix``): each client keeps its own
  state and row i of an n x n matrix W mixes the round's updates into client i's next state (FedAvg is W
  with identical rows; training alone is the identity);
- ``pools_data`` strategies (the centralised baseline): the run trains one model on the union of the
  sampled clients' data instead of each client on its own.
A strategy that needs more than the updates (server data, a model to score states with) gets it once, in
``bind``, from a :class:`ServerContext`; ``bind`` raises if something it needs is missing, before round 1.

Each strategy has a small frozen ``Settings`` dataclass whose fields carry their help in
``metadata["help"]``; ``fl.strategy_args`` in a recipe is checked against it before round 1.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, get_args, get_origin

import torch

from fedpeft.fl.client_round import ClientHook, ClientUpdate, LocalTrainingArgs
from fedpeft.tensors import TensorDict
from fedpeft.tensors.batching import TokenizedExample


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


@dataclasses.dataclass(frozen=True)
class NoSettings:
    pass


def setting(default: Any, help: str) -> Any:
    """A strategy setting with its help text (shown by ``fedpeft strategies``)."""
    return dataclasses.field(default=default, metadata={"help": help})


class Strategy(ABC):
    name: ClassVar[str]
    Settings: ClassVar[type] = NoSettings
    personalised: ClassVar[bool] = False
    """Each client keeps its own state (see :class:`PersonalisedStrategy`)."""
    pools_data: ClassVar[bool] = False
    """Train one model on the union of the sampled clients' data (the centralised baseline)."""
    hook_reads_server_state: ClassVar[bool] = False
    """Its ``client_hook`` needs state only the server holds (SCAFFOLD's control variates), so a client
    that rebuilds the strategy from the configuration (the Flower runtime) cannot apply it."""
    stackable: ClassVar[bool] = False
    """Aggregates LoRA pairs by the example-weighted mean, so ``fl.lora_aggregation=stack`` can stand in."""
    communicates: ClassVar[bool] = True
    """False for baselines that exchange nothing (training alone, pooled data): their rounds count 0 bytes."""

    def __init__(self, settings: Any = None):
        self.settings = settings if settings is not None else self.Settings()

    @abstractmethod
    def aggregate(self, global_state: TensorDict, updates: Sequence[ClientUpdate], server_round: int) -> TensorDict:
        """The next global state."""

    def check_round_size(self, n_clients: int) -> None:
        """Raise ValueError if rounds of ``n_clients`` updates would make this strategy degenerate."""
        return None

    def bind(self, context: ServerContext) -> None:
        """Take what the strategy needs from the run; raise ValueError naming the missing setting if it
        cannot work with this run (called after setup has built the model and data, before round 1)."""
        return None

    def client_hook(self, client_id: int, global_state: TensorDict) -> ClientHook | None:
        """What the client round must add to local training for this strategy (None: nothing)."""
        return None

    def extra_payload_bytes(self, global_state: TensorDict, transport: torch.dtype | None = None) -> int:
        """Bytes a client exchanges per direction besides its trainable state (e.g. control variates),
        floating-point tensors counted at ``transport`` if given."""
        return 0

    def round_figures(self) -> dict[str, float]:
        """Figures from the last aggregation for the round's log record (e.g. distillation losses)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"strategy {self.name!r} keeps no state but the checkpoint has {sorted(state)}")


class PersonalisedStrategy(Strategy):
    """Each client keeps its own state; after a round, client i's state becomes sum_j W[i, j] theta_j over
    the round's updates (rows of W are normalised by :func:`fedpeft.tensors.aggregate.mix_states`)."""

    personalised = True

    @abstractmethod
    def mixing_matrix(self, updates: Sequence[ClientUpdate], server_round: int) -> torch.Tensor:
        """(n x n) non-negative weights for the round's n updates, in their order."""

    def aggregate(self, global_state: TensorDict, updates: Sequence[ClientUpdate], server_round: int) -> TensorDict:
        raise TypeError(f"strategy {self.name!r} is personalised: it returns a mixing matrix, not one global state")


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    def register(cls: type[Strategy]) -> type[Strategy]:
        if name in STRATEGIES:
            raise ValueError(f"strategy {name!r} is already registered by {STRATEGIES[name].__qualname__}")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return register


def parse_settings(name: str, settings_cls: type, args: Mapping[str, Any]) -> Any:
    """``args`` (from ``fl.strategy_args``) as the strategy's Settings, with errors that name the key."""
    fields = {f.name: f for f in dataclasses.fields(settings_cls)}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise ValueError(f"fl.strategy_args has {unknown}, which strategy {name!r} does not take; valid: {valid}")
    hints = typing.get_type_hints(settings_cls)
    values = {}
    for key, raw in args.items():
        kind = hints[key]
        if kind is float and isinstance(raw, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                raw = float(raw)
            except ValueError:
                pass
        if kind is float and isinstance(raw, int | float) and not isinstance(raw, bool):
            values[key] = float(raw)
        elif kind is int and isinstance(raw, int) and not isinstance(raw, bool):
            values[key] = raw
        elif kind is bool and isinstance(raw, bool):
            values[key] = raw
        elif get_origin(kind) is Literal:
            if raw not in get_args(kind):
                choices = ", ".join(map(str, get_args(kind)))
                raise ValueError(f"fl.strategy_args.{key}={raw!r} is not one of {choices} (strategy {name!r})")
            values[key] = raw
        else:
            kind_name = getattr(kind, "__name__", str(kind))
            raise ValueError(f"fl.strategy_args.{key}={raw!r} is not a valid {kind_name} (strategy {name!r})")
    try:
        return settings_cls(**values)
    except ValueError as err:
        raise ValueError(f"fl.strategy_args for {name!r}: {err}") from None


def build_strategy(name: str, args: Mapping[str, Any] | None = None) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown fl.strategy {name!r}; valid strategies: {', '.join(sorted(STRATEGIES))}")
    cls = STRATEGIES[name]
    return cls(parse_settings(name, cls.Settings, args or {}))


def describe_strategies() -> list[tuple[str, str, list[tuple[str, Any, str]]]]:
    """(name, one-line summary, [(setting, default, help)]) for every registered strategy."""
    rows = []
    for name in sorted(STRATEGIES):
        cls = STRATEGIES[name]
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        settings = [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls.Settings)]
        rows.append((name, doc, settings))
    return rows
