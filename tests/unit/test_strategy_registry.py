"""One shared tester over every registered strategy: hand-built client states (float64, a LoRA pair and a
head), expected values worked out by hand below, a first round and a second where state matters. A strategy
registered without a case here fails ``test_every_registered_strategy_has_a_case``.

Every round passes the context in and never calls ``bind``: no strategy depends on a call order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from fedpeft.fl.client_round import ClientUpdate, LocalTrainingArgs
from fedpeft.fl.lora_aggregation import aggregate_personalised_round
from fedpeft.fl.strategies import STRATEGIES, ServerContext, build_strategy
from fedpeft.fl.strategies import fedkd as fedkd_module
from fedpeft.tensors.batching import TokenizedExample

KEYS = ("a.lora_A.weight", "a.lora_B.weight", "head.weight")


def state(a: list[float], b: list[float], head: list[float]) -> dict[str, torch.Tensor]:
    """A state from its six numbers: A is 1 x 2, B is 2 x 1, the head has 2."""
    return {
        "a.lora_A.weight": torch.tensor([a], dtype=torch.float64),
        "a.lora_B.weight": torch.tensor([[b[0]], [b[1]]], dtype=torch.float64),
        "head.weight": torch.tensor(head, dtype=torch.float64),
    }


def flat(s: dict[str, torch.Tensor]) -> list[float]:
    return [v for k in KEYS for v in s[k].flatten().tolist()]


def unflat(v: list[float]) -> dict[str, torch.Tensor]:
    return state(v[0:2], v[2:4], v[4:6])


X = state([1, 2], [0, 1], [0, 4])
"""The global state the first round starts from."""
CLIENTS = [
    (1, state([3, 2], [2, 1], [0, 0])),
    (3, state([-1, 6], [2, -3], [4, 8])),
    (2, state([5, 0], [-2, 1], [2, -8])),
    (3, state([1, 4], [0, 5], [6, 2])),
]
"""(examples, state) of clients 0..3; most cases use the first two."""
MEAN_01 = state([0, 5], [2, -2], [3, 6])
"""(1 * client 0 + 3 * client 1) / 4, element by element: e.g. A[0] = (3 - 3) / 4, A[1] = (2 + 18) / 4."""
STEPS = 2
"""Local steps of every update."""


def updates(n: int) -> list[ClientUpdate]:
    return [ClientUpdate(i, s, count, STEPS, 0.0, 0.0) for i, (count, s) in enumerate(CLIENTS[:n])]


def fake_context(lora_aggregation: str = "separate") -> ServerContext:
    """Four clients (N = 4), a constant LR of 0.25 (two steps sum to 0.5), three server rows, and scores
    without a model: the loss of client j's model on client i's rows is ln(1 + |i - j|)."""
    args = LocalTrainingArgs(
        epochs=None, max_steps=STEPS, batch_size=2, micro_batch_size=2, lr=0.25, schedule="constant",
        warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=None, mask_prompt=True, pad_id=0,
    )  # fmt: skip
    owner = {id(s): i for i, (_, s) in enumerate(CLIENTS)}

    def loss(trained: dict[str, torch.Tensor], rows) -> float:
        return math.log(1 + abs(rows[0].input_ids[0] - owner[id(trained)]))

    return ServerContext(
        model=None,
        args=args,
        seed=0,
        server_data=[TokenizedExample(input_ids=(9, r), prompt_len=1) for r in range(3)],
        client_val={i: [TokenizedExample(input_ids=(i, 1), prompt_len=1)] for i in range(4)},
        client_categories={0: {"a": 1, "b": 1}, 1: {"a": 1}, 2: {"b": 2}, 3: {"a": 2}},
        loss=loss,
        probabilities=None,
        lora_aggregation=lora_aggregation,
    )


@dataclass
class Case:
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    clients: int = 2
    rounds: list[Any] = field(default_factory=list)
    """Per round: the expected global state (global and pooled kinds) or mixing matrix (personalised);
    every round aggregates the same client states."""
    figures: list[dict[str, float]] = field(default_factory=list)
    """Per round, the expected figures (empty: none)."""
    rtol: float = 0.0
    """0: bit-exact; else the relative tolerance of a value computed through square roots or exponentials."""
    context: Callable[[], ServerContext] | None = None
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


# ---- the server optimisers, by hand on the six elements --------------------------------------------------


def adaptive_by_hand(
    rounds: int, eta: Callable[[int], float], beta_1: float, tau: float, second: Callable[[float, float], float]
) -> list[dict[str, torch.Tensor]]:
    """m <- beta_1 m + (1 - beta_1) d; v <- second(v, d^2); x <- x + eta(t) m / (sqrt(v) + tau), element by
    element with d = mean - x and the same clients every round."""
    x, mean = flat(X), flat(MEAN_01)
    m, v = [0.0] * 6, [0.0] * 6
    out = []
    for t in range(1, rounds + 1):
        d = [mi - xi for mi, xi in zip(mean, x, strict=True)]
        m = [beta_1 * a + (1 - beta_1) * b for a, b in zip(m, d, strict=True)]
        v = [second(a, b * b) for a, b in zip(v, d, strict=True)]
        x = [xi + eta(t) * mi / (math.sqrt(vi) + tau) for xi, mi, vi in zip(x, m, v, strict=True)]
        out.append(unflat(x))
    return out


ADAPTIVE = {"eta": 0.1, "beta_1": 0.5, "tau": 0.25}


def fedkd_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model: the teacher 'trains' to start + 1 (loss 0.5); 'distillation' gives the student the mean of
    the two and the teacher its old value - 1, checking it runs for ceil(1 epoch * ceil(3 rows / 2)) = 2 steps."""

    def train_teacher(context, start, epochs):
        assert epochs == 3.0
        return ClientUpdate(-1, {k: v + 1 for k, v in start.items()}, 3, 1, 0.5, 0.0)

    def mutual_distillation(model, student, teacher, examples, train, kd, rng):
        assert kd.steps == 2 and len(examples) == 3
        mixed = {k: (student[k] + teacher[k]) / 2 for k in student}
        return mixed, {k: v - 1 for k, v in teacher.items()}, {"kd_student_loss": 1.0, "kd_teacher_loss": 2.0}

    monkeypatch.setattr(fedkd_module, "train_teacher", train_teacher)
    monkeypatch.setattr(fedkd_module, "mutual_distillation", mutual_distillation)


E = math.e
TRUST_REF_ROW_0 = [1 / (1 + 1 / E), (1 / E) / (1 + 1 / E)]
"""dynamic-ref: perplexities [[1, 2], [2, 1]] (exp of ln(1 + |i - j|)); row 0 = softmax([-1, -2])."""

CASES = [
    Case("fedavg", rounds=[MEAN_01, MEAN_01]),
    Case("fedprox", {"mu": 0.5}, rounds=[MEAN_01, MEAN_01]),
    # Coordinate-wise middle of clients 0..2: A [3, -1, 5] -> 3, [2, 6, 0] -> 2; B [2, 2, -2] -> 2,
    # [1, -3, 1] -> 1; head [0, 4, 2] -> 2, [0, 8, -8] -> 0.
    Case("fedmedian", clients=3, rounds=[state([3, 2], [2, 1], [2, 0])]),
    # int(0.25 * 4) = 1 cut from each end, the middle two averaged: A [-1, 1, 3, 5] -> 2, [0, 2, 4, 6] -> 3;
    # B [-2, 0, 2, 2] -> 1, [-3, 1, 1, 5] -> 1; head [0, 2, 4, 6] -> 3, [-8, 0, 2, 8] -> 1.
    Case("fedtrimmedavg", {"beta": 0.25}, clients=4, rounds=[state([2, 3], [1, 1], [3, 1])]),
    # Squared distances: d01 = 128, d02 = 92, d03 = 68, d12 = 364, d13 = 116, d23 = 168; with f = 0 each
    # client sums its 2 nearest: 160, 244, 260, 184. Krum keeps client 0.
    Case("krum", {"byzantine": 0}, clients=4, rounds=[CLIENTS[0][1]]),
    # Multi-Krum keeps clients 0 and 3 (1 and 3 examples): (1 * c0 + 3 * c3) / 4.
    Case("multikrum", {"byzantine": 0, "keep": 2}, clients=4, rounds=[state([1.5, 3.5], [0.5, 4], [4.5, 1.5])]),
    # The pooled update is the next state as it is.
    Case("centralised", clients=1, rounds=[CLIENTS[0][1]]),
    # FedAvgM with server_lr 0.5, momentum 0.5: round 1 u = x - mean, x1 = x - 0.5 u = (x + mean) / 2;
    # round 2 u2 = 0.5 u + (x1 - mean) = x - mean again, so x2 = x1 - 0.5 (x - mean) = mean.
    Case(
        "fedavgm",
        {"server_lr": 0.5, "momentum": 0.5},
        rounds=[state([0.5, 3.5], [1, -0.5], [1.5, 5]), MEAN_01],
    ),
    # FedAdam as Flower: the step size of server step t uses exponent t + 1.
    Case(
        "fedadam",
        {**ADAPTIVE, "beta_2": 0.75},
        rounds=adaptive_by_hand(
            2,
            lambda t: 0.1 * math.sqrt(1 - 0.75 ** (t + 1)) / (1 - 0.5 ** (t + 1)),
            0.5,
            0.25,
            lambda v, d2: 0.75 * v + 0.25 * d2,
        ),  # fmt: skip
        rtol=1e-12,
    ),
    Case(
        "fedyogi",
        {**ADAPTIVE, "beta_2": 0.75},
        rounds=adaptive_by_hand(
            2, lambda t: 0.1, 0.5, 0.25, lambda v, d2: v - 0.25 * d2 * (1.0 if v > d2 else -1.0 if v < d2 else 0.0)
        ),
        rtol=1e-12,
    ),
    Case(
        "fedadagrad", ADAPTIVE, rounds=adaptive_by_hand(2, lambda t: 0.1, 0.5, 0.25, lambda v, d2: v + d2), rtol=1e-12
    ),
    # SCAFFOLD moves the global state to the mean (server_lr 1); its variates are checked below.
    Case("scaffold", rounds=[MEAN_01, MEAN_01], context=fake_context),
    # DP-FedAvg, no noise, C = 5: client 0's update [2, 0, 2, 0, 0, -4] has norm sqrt(24) < 5 and stays;
    # client 1's [-2, 4, 2, -4, 4, 4] has norm sqrt(72) and is scaled by 5 / sqrt(72); equal weights.
    Case(
        "dp-fedavg",
        {"clipping_norm": 5.0, "noise_multiplier": 0.0},
        rounds=[
            unflat(
                [
                    x + (u0 + u1 * 5 / math.sqrt(72)) / 2
                    for x, u0, u1 in zip(flat(X), [2, 0, 2, 0, 0, -4], [-2, 4, 2, -4, 4, 4], strict=True)
                ]
            )
        ],
        figures=[{"dp_noise_std": 0.0, "dp_clipped_fraction": 0.5, "dp_max_update_norm": math.sqrt(72)}],
        rtol=1e-12,
    ),
    # FedKD with the fakes of fedkd_patch: round 1 trains the teacher T = x + 1 and gives (mean + T) / 2;
    # round 2 keeps the teacher (now x) and gives (mean + x) / 2.
    Case(
        "fedkd",
        rounds=[state([1, 4], [1.5, 0], [2, 5.5]), state([0.5, 3.5], [1, -0.5], [1.5, 5])],
        figures=[
            {"kd_teacher_train_loss": 0.5, "kd_student_loss": 1.0, "kd_teacher_loss": 2.0},
            {"kd_student_loss": 1.0, "kd_teacher_loss": 2.0},
        ],
        context=fake_context,
        patch=fedkd_patch,
    ),
    Case("local", rounds=[[[1.0, 0.0], [0.0, 1.0]]]),
    Case("trust", {"weights": "naive"}, rounds=[[[0.5, 0.5], [0.5, 0.5]]]),
    # static: category shares D = [[1/2, 1/2], [1, 0]], W = D D^T = [[1/2, 1/2], [1/2, 1]], rows normalised.
    Case("trust", {"weights": "static"}, rounds=[[[0.5, 0.5], [1 / 3, 2 / 3]]], context=fake_context),
    Case(
        "trust",
        {"weights": "dynamic-ref"},
        rounds=[[TRUST_REF_ROW_0, TRUST_REF_ROW_0[::-1]]],
        context=fake_context,
        rtol=1e-12,
    ),
]


def case_id(case: Case) -> str:
    return case.name + "".join(f"-{v}" for v in case.settings.values())


def test_every_registered_strategy_has_a_case():
    missing = sorted(set(STRATEGIES) - {c.name for c in CASES})
    assert not missing, f"strategies without a case in CASES: {missing}"


def assert_states(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rtol: float) -> None:
    assert set(got) == set(expected)
    for k in expected:
        assert got[k].dtype == torch.float64
        if rtol:
            torch.testing.assert_close(got[k], expected[k], rtol=rtol, atol=1e-15)
        else:
            assert torch.equal(got[k], expected[k]), (k, got[k], expected[k])


def assert_figures(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got == pytest.approx(expected, rel=1e-12)


def run_rounds(case: Case, strategy, rounds: range, start=X) -> list:
    """The strategy's results for ``rounds`` (the same client states every round)."""
    context = case.context() if case.context else None
    out = []
    global_state = start
    for rnd in rounds:
        if strategy.kind == "personalised":
            out.append(strategy.mixing_weights(updates(case.clients), rnd, context))
        else:
            result = strategy.aggregate(global_state, updates(case.clients), rnd, context)
            global_state = result
            out.append(result)
    return out


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_rounds_by_hand(case: Case, monkeypatch):
    if case.patch:
        case.patch(monkeypatch)
    strategy = build_strategy(case.name, case.settings)
    strategy.check_round_size(case.clients)
    if case.context:
        strategy.check_context(case.context())
    for i, result in enumerate(run_rounds(case, strategy, range(1, len(case.rounds) + 1))):
        expected = case.rounds[i]
        if strategy.kind == "personalised":
            w = torch.tensor(expected, dtype=torch.float64)
            torch.testing.assert_close(result.weights, w, rtol=case.rtol, atol=1e-15 if case.rtol else 0)
        else:
            assert_states(result, expected, case.rtol)
            assert result.state.keys() == expected.keys() and not isinstance(result.state, type(result))
        assert_figures(result.figures, case.figures[i] if case.figures else {})


@pytest.mark.parametrize("case", [c for c in CASES if len(c.rounds) > 1], ids=case_id)
def test_state_between_rounds_survives_state_dict(case: Case, monkeypatch):
    """Round 2 from a fresh strategy loaded with round 1's state_dict equals round 2 of the original."""
    if case.patch:
        case.patch(monkeypatch)
    first = build_strategy(case.name, case.settings)
    (after_one,) = run_rounds(case, first, range(1, 2))
    again = build_strategy(case.name, case.settings)
    again.load_state_dict(first.state_dict())
    (a,) = run_rounds(case, first, range(2, 3), start=after_one)
    (b,) = run_rounds(case, again, range(2, 3), start=after_one)
    assert_states(b, a, 0.0)
    assert first.state_dict().keys() == again.state_dict().keys()


def test_scaffold_control_variates_by_hand():
    """N = 4 clients, 2 of them a round, scale 1 / (0.25 + 0.25) = 2. Round 1 (zero variates):
    c_i = 2 (x - y_i); c = (2 / 4) * mean_i c_i. Round 2 (the same y_i, from x1 = the mean):
    c_i' = c_i - c + 2 (x1 - y_i); c' = c + (2 / 4) * mean_i (c_i' - c_i)."""
    strategy = build_strategy("scaffold")
    context = fake_context()
    x1 = strategy.aggregate(X, updates(2), 1, context)
    assert flat(strategy.c_clients[0]) == [-4, 0, -4, 0, 0, 8]
    assert flat(strategy.c_clients[1]) == [4, -8, -4, 8, -8, -8]
    assert flat(strategy.c) == [0, -2, -2, 2, -2, 0]
    # Client 0's next local gradients move by c - c_0 (float32).
    correction = strategy.client_hook(0, x1).correction
    assert flat(correction) == [4, -2, 2, 2, -2, -8] and correction["head.weight"].dtype == torch.float32
    strategy.aggregate(x1, updates(2), 2, context)
    assert flat(strategy.c_clients[0]) == [-10, 8, -2, -8, 8, 20]
    assert flat(strategy.c_clients[1]) == [6, -8, -2, 8, -8, -12]
    assert flat(strategy.c) == [-1, 0, -1, 0, 0, 2]
    assert sorted(strategy.state_dict()) == sorted(
        [f"c/{k}" for k in KEYS] + [f"ci/{cid}/{k}" for cid in (0, 1) for k in KEYS]
    )


def test_fedkd_teacher_is_state_between_rounds(monkeypatch):
    fedkd_patch(monkeypatch)
    strategy = build_strategy("fedkd")
    strategy.aggregate(X, updates(2), 1, fake_context())
    assert sorted(strategy.state_dict()) == [f"teacher/{k}" for k in sorted(KEYS)]
    assert_states(strategy.teacher, X, 0.0)  # x + 1 after training, - 1 after the fake distillation


def test_personalised_round_mixes_by_hand():
    """Static trust gives client 1 the row [1/3, 2/3]: (c0 + 2 c1) / 3, element by element."""
    strategy = build_strategy("trust", {"weights": "static"})
    states, _, figures = aggregate_personalised_round(strategy, "separate", updates(2), 1, context=fake_context())
    c0, c1 = flat(CLIENTS[0][1]), flat(CLIENTS[1][1])
    assert_states(states[0], unflat([(a + b) / 2 for a, b in zip(c0, c1, strict=True)]), 1e-15)
    assert_states(states[1], unflat([(a + 2 * b) / 3 for a, b in zip(c0, c1, strict=True)]), 1e-15)
    assert figures == {}


def test_kind_replaces_the_two_flags_and_they_stay_readable():
    for name in STRATEGIES:
        cls = STRATEGIES[name]
        assert cls.kind in ("global", "personalised", "pooled")
        assert cls.personalised == (cls.kind == "personalised") and cls.pools_data == (cls.kind == "pooled")
    assert {n for n in STRATEGIES if STRATEGIES[n].kind != "global"} == {"local", "trust", "centralised"}
    strategy = build_strategy("trust")
    assert strategy.personalised and not strategy.pools_data
    with pytest.raises(AttributeError, match="kind"):
        strategy.personalised = False


def test_strategies_that_need_the_run_say_so_without_a_context():
    with pytest.raises(RuntimeError, match="scaffold must be bound to the run"):
        build_strategy("scaffold").aggregate(X, updates(2), 1)
    with pytest.raises(RuntimeError, match="trust must be bound to the run"):
        build_strategy("trust").mixing_weights(updates(2), 1)
    with pytest.raises(TypeError, match="personalised"):
        build_strategy("local").aggregate(X, updates(2), 1)


def test_describe_lists_every_strategy_with_its_settings():
    rows = {name: (summary, settings) for name, summary, settings in STRATEGIES.describe()}
    assert sorted(rows) == sorted(STRATEGIES)
    assert rows["fedprox"][1] == [
        ("mu", 0.01, "Weight of the proximal term mu/2 * ||theta - theta_global||^2 (0: FedAvg).")
    ]
    assert all(summary for summary, _ in rows.values())
