"""The runtime interface: what the experiment's round loop asks of whatever moves states to the clients.

A :class:`Runtime` trains a round (each sampled client from the state it is sent), trains the centralised
baseline's pooled round where it can, evaluates states on the clients' own validation rows (where the rows
are: numbers come back, never rows), and closes. ``local`` runs every client in this
process; the Flower runtimes send the same work to SuperNodes. Transport dtype, byte counting and client
ranks belong to the experiment, not to a runtime.

How a run is *started* differs per runtime (in this process; as the ServerApp of a Flower simulation;
submitted to a SuperLink), so each runtime registers a :class:`RuntimeLauncher` in :data:`RUNTIMES`
under its ``runtime:`` name. The experiment hands a launcher a :class:`Launch`: flat arguments plus
``run_here``, the experiment's own run in this process; a launcher that replaces the local runtime by
another passes ``run_here`` a function from the local runtime to its own. No runtime imports the
experiment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from fedpeft.fl.client_round import ClientHook, ClientUpdate
from fedpeft.registry import Registry
from fedpeft.tensors import TensorDict

R = TypeVar("R")
ClientEvaluation = tuple[dict[str, float], int]
"""A client's validation metrics and the number of examples they are over."""
ClientEvaluator = Callable[[int, TensorDict, float | None], ClientEvaluation]
"""``evaluate(client, state, threshold)``: a client's metrics of a state on its validation rows."""
RunResult = tuple[Path, dict[str, Any]]
"""(run directory, summary) of a finished run."""


@runtime_checkable
class Runtime(Protocol):
    """Moves states to the sampled clients and their updates back; the strategy and the records stay with
    the experiment."""

    def train_round(
        self,
        server_round: int,
        client_ids: Sequence[int],
        global_state: TensorDict,
        on_client_start: Callable[[int, int], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
        hook_for: Callable[[int, TensorDict], ClientHook | None] | None = None,
        client_states: Mapping[int, TensorDict] | None = None,
        on_client_failed: Callable[[int, str], None] | None = None,
    ) -> list[ClientUpdate]:
        """Each sampled client's update, trained from ``global_state`` (or its own entry in
        ``client_states``). A client lost on the way is reported to ``on_client_failed(client, reason)``."""
        ...

    def train_pooled(
        self,
        server_round: int,
        client_ids: Sequence[int],
        global_state: TensorDict,
        on_client_start: Callable[[int, int], None] | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[ClientUpdate]:
        """One update on the union of the clients' rows (the centralised baseline), where the runtime can."""
        ...

    def evaluate_clients(
        self,
        server_round: int,
        states: Mapping[int, TensorDict],
        thresholds: Mapping[int, float] | None = None,
        on_client_failed: Callable[[int, str], None] | None = None,
    ) -> dict[int, ClientEvaluation]:
        """Each client's metrics of ``states[client]`` on its own validation rows, where those rows are (this
        process for ``local``; the client's node for Flower), with the number of examples; ``thresholds``:
        a classification task's decision threshold per client. Only numbers come back."""
        ...

    def close(self) -> None:
        """Release what the runtime holds (connections, worker processes)."""
        ...


@dataclass(frozen=True)
class Launch:
    """What a launcher needs to start one run: flat arguments, built by the experiment from the config."""

    run_here: Callable[[Callable[[Any], Runtime] | None], RunResult]
    """The run in this process; given a function, it replaces the local runtime by what that returns."""
    n_clients: int
    config_text: str
    """The resolved configuration as YAML: what remote clients rebuild their side of the run from."""
    output_dir: Path
    resume_dir: Path | None = None
    quiet: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    """The runtime's own settings (the ``flower`` section, flattened), by name."""
    build_client_side: Callable[[str], Any] | None = None
    """For runtimes with remote clients: builds a client's side of the run from ``config_text``."""
    client_fault: Callable[[int, int, TensorDict, Callable[[TensorDict], ClientUpdate]], ClientUpdate] | None = None
    """For runtimes with remote clients: wraps each client round there, ``(round, client, start, train) ->
    update`` (a fault drill, passed by the entry points; ``fedpeft.testing.fault_drill``)."""


class RuntimeLauncher(ABC):
    """Starts a run on one runtime. The class docstring's first line is its summary in ``fedpeft runtimes``."""

    name: str
    in_process: bool = False
    """Every client trains in the experiment's own process (the strategy's client hook may read server state,
    and the centralised baseline may pool the clients' rows)."""

    @abstractmethod
    def launch(self, job: Launch) -> RunResult:
        """Run the experiment on this runtime; (run directory, summary) once it ends."""


RUNTIMES: Registry[type[RuntimeLauncher]] = Registry("runtime", "runtime")


def launcher(name: str) -> RuntimeLauncher:
    """The launcher of runtime ``name`` (a ValueError naming the valid runtimes if there is none)."""
    return RUNTIMES.get(name)()
