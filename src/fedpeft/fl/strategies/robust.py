"""Byzantine-robust aggregation: coordinate-wise median (Yin et al., 2018), trimmed mean, and Krum /
Multi-Krum (Blanchard et al., 2017). Settings under which they degenerate (trimming nobody or everybody,
Krum with too few clients, Multi-Krum keeping everyone) are refused before round 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies.base import Aggregate, ServerContext, Strategy, register_strategy, setting
from fedpeft.tensors import TensorDict, weighted_average
from fedpeft.tensors.aggregate import coordinate_median, krum_scores, trimmed_mean


@register_strategy("fedmedian")
class FedMedian(Strategy):
    """Coordinate-wise median of the client states (Yin et al., 2018); example counts are ignored."""

    def check_round_size(self, n_clients: int) -> None:
        if n_clients < 3:
            raise ValueError(f"fedmedian with {n_clients} clients per round is a plain mean; sample at least 3")

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        return Aggregate(coordinate_median([u.state for u in updates]))


@dataclass(frozen=True)
class TrimmedSettings:
    beta: float = setting(0.2, "Fraction cut from each end per coordinate: int(beta * clients) values each side.")

    def __post_init__(self) -> None:
        if not 0 < self.beta < 0.5:
            raise ValueError(f"beta={self.beta} must be in (0, 0.5)")


@register_strategy("fedtrimmedavg")
class FedTrimmedAvg(Strategy):
    """Coordinate-wise mean after dropping the int(beta * n) smallest and largest values (Yin et al., 2018)."""

    Settings = TrimmedSettings

    def check_round_size(self, n_clients: int) -> None:
        cut = int(self.settings.beta * n_clients)
        if cut < 1:
            raise ValueError(
                f"fedtrimmedavg with beta={self.settings.beta} and {n_clients} clients per round trims nobody "
                f"(int(beta * clients) = 0); raise beta to at least {1 / n_clients:.3g} or sample more clients"
            )

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        return Aggregate(trimmed_mean([u.state for u in updates], self.settings.beta))


@dataclass(frozen=True)
class KrumSettings:
    byzantine: int = setting(1, "f: the number of malicious clients to tolerate (needs clients >= 2f + 3).")

    def __post_init__(self) -> None:
        if self.byzantine < 0:
            raise ValueError(f"byzantine={self.byzantine} must be >= 0")


@dataclass(frozen=True)
class MultiKrumSettings(KrumSettings):
    keep: int = setting(2, "How many lowest-score clients are averaged.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep < 1:
            raise ValueError(f"keep={self.keep} must be >= 1")


def _check_krum(name: str, f: int, n_clients: int) -> None:
    if n_clients < 2 * f + 3:
        raise ValueError(
            f"{name} with byzantine={f} needs at least 2f + 3 = {2 * f + 3} clients per round, got {n_clients}; "
            f"lower fl.strategy_args.byzantine or sample more clients"
        )


@register_strategy("krum")
class Krum(Strategy):
    """The one client state closest to its n - f - 2 nearest neighbours (Blanchard et al., 2017)."""

    Settings = KrumSettings

    def check_round_size(self, n_clients: int) -> None:
        _check_krum("krum", self.settings.byzantine, n_clients)

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        scores = krum_scores([u.state for u in updates], self.settings.byzantine)
        return Aggregate(dict(updates[int(scores.argmin())].state))


@register_strategy("multikrum")
class MultiKrum(Strategy):
    """Example-weighted mean of the `keep` client states with the lowest Krum scores."""

    Settings = MultiKrumSettings

    def check_round_size(self, n_clients: int) -> None:
        _check_krum("multikrum", self.settings.byzantine, n_clients)
        if self.settings.keep >= n_clients:
            raise ValueError(
                f"multikrum keeping {self.settings.keep} of {n_clients} clients keeps everyone (a plain mean); "
                f"set fl.strategy_args.keep below {n_clients}"
            )

    def aggregate_updates(
        self,
        global_state: TensorDict,
        updates: Sequence[ClientUpdate],
        server_round: int,
        context: ServerContext | None = None,
    ) -> Aggregate:
        scores = krum_scores([u.state for u in updates], self.settings.byzantine)
        chosen = [updates[int(i)] for i in scores.argsort()[: self.settings.keep]]
        return Aggregate(weighted_average([u.state for u in chosen], [u.num_examples for u in chosen]))
