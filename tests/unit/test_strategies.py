"""The strategy catalogue against independent references: Flower's own strategies and aggregation
functions on the same arrays, and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

from fedpeft.fl.client_round import ClientUpdate
from fedpeft.fl.strategies import build_strategy
from fedpeft.fl.strategies.fedprox import ProximalTerm

SHAPES = {"lora_A": (4, 6), "lora_B": (6, 4), "head": (3,)}


def update(cid: int, state: dict[str, torch.Tensor], n: int) -> ClientUpdate:
    return ClientUpdate(client_id=cid, state=state, num_examples=n, num_steps=1, train_loss=0.0, seconds=0.0)


def random_states(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=gen) for k, s in SHAPES.items()} for _ in range(n)]


def as_flower(states, counts):
    return [([s[k].numpy() for k in SHAPES], n) for s, n in zip(states, counts, strict=True)]


def assert_matches(ours: dict[str, torch.Tensor], theirs) -> None:
    for key, ref in zip(SHAPES, theirs, strict=True):
        np.testing.assert_allclose(ours[key].numpy(), np.asarray(ref, dtype=np.float64), rtol=1e-5, atol=1e-6)


COUNTS = [3, 17, 1, 40, 9, 5, 12]


def run(name: str, states, counts=COUNTS, global_state=None, server_round: int = 1, **args):
    strategy = build_strategy(name, args)
    strategy.check_round_size(len(states))
    updates = [update(i, s, n) for i, (s, n) in enumerate(zip(states, counts, strict=True))]
    return strategy.aggregate(global_state or states[0], updates, server_round)


@pytest.mark.parametrize("n", [5, 6])
def test_fedmedian_matches_flower(n):
    states = random_states(n, 1)
    assert_matches(run("fedmedian", states, COUNTS[:n]), aggregate_median(as_flower(states, COUNTS[:n])))


@pytest.mark.parametrize(("n", "beta"), [(5, 0.2), (7, 0.3), (6, 0.45)])
def test_fedtrimmedavg_matches_flower(n, beta):
    states = random_states(n, 2)
    ours = run("fedtrimmedavg", states, COUNTS[:n], beta=beta)
    assert_matches(ours, aggregate_trimmed_avg(as_flower(states, COUNTS[:n]), beta))


def test_krum_and_multikrum_match_flower():
    states = random_states(7, 3)
    states[2] = {k: v + 10 for k, v in states[2].items()}  # an outlier Krum must never pick
    assert_matches(run("krum", states, byzantine=2), aggregate_krum(as_flower(states, COUNTS), 2, 0))
    multi = run("multikrum", states, byzantine=2, keep=3)
    assert_matches(multi, aggregate_krum(as_flower(states, COUNTS), 2, 3))
    assert not torch.equal(run("krum", states, byzantine=2)["head"], states[2]["head"])


def test_degenerate_robust_settings_are_errors_not_silent_means():
    with pytest.raises(ValueError, match="trims nobody"):
        build_strategy("fedtrimmedavg", {"beta": 0.2}).check_round_size(4)
    with pytest.raises(ValueError, match=r"beta=0.5 must be in \(0, 0.5\)"):
        build_strategy("fedtrimmedavg", {"beta": 0.5})
    with pytest.raises(ValueError, match="needs at least 2f \\+ 3 = 5 clients per round, got 4"):
        build_strategy("krum", {"byzantine": 1}).check_round_size(4)
    with pytest.raises(ValueError, match="keeps everyone"):
        build_strategy("multikrum", {"byzantine": 1, "keep": 5}).check_round_size(5)
    with pytest.raises(ValueError, match="plain mean"):
        build_strategy("fedmedian").check_round_size(2)


def test_settings_errors_name_the_key_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"has \['nu'\], which strategy 'fedprox' does not take; valid: mu"):
        build_strategy("fedprox", {"nu": 1})
    with pytest.raises(ValueError, match="fl.strategy_args.mu='x' is not a valid float"):
        build_strategy("fedprox", {"mu": "x"})
    with pytest.raises(ValueError, match="valid: none"):
        build_strategy("fedavg", {"mu": 1})
    assert build_strategy("fedprox", {"mu": 1}).settings.mu == 1.0  # YAML ints are floats here
    assert build_strategy("fedprox", {"mu": "1e-4"}).settings.mu == 1e-4  # YAML 1.1 reads 1e-4 as a string


@pytest.fixture
def flower_message():
    """Flower's Message API needs a task identity outside a running app; set one, then restore it."""
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1

    def reply(state: dict[str, torch.Tensor], n: int) -> Message:
        arrays = ArrayRecord({k: Array(v.numpy()) for k, v in state.items()})
        return Message(
            content=RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n})}),
            dst_node_id=1,
            message_type="train",
        )

    yield reply
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.mark.parametrize(
    ("name", "flower_name", "ours", "theirs"),
    [
        ("fedadam", "FedAdam", {"eta": 0.1, "beta_2": 0.99, "tau": 1e-3}, {"eta": 0.1, "beta_2": 0.99, "tau": 1e-3}),
        ("fedyogi", "FedYogi", {"eta": 0.05, "tau": 1e-2}, {"eta": 0.05, "tau": 1e-2}),
        ("fedadagrad", "FedAdagrad", {"eta": 0.05, "beta_1": 0.0}, {"eta": 0.05}),  # Flower fixes beta_1 = 0
        (
            "fedavgm",
            "FedAvgM",
            {"server_lr": 0.7, "momentum": 0.8},
            {"server_learning_rate": 0.7, "server_momentum": 0.8},
        ),
    ],
)
def test_server_optimizers_match_flower_over_three_rounds(flower_message, name, flower_name, ours, theirs):
    import flwr.serverapp.strategy as flower_strategies
    from flwr.app import Array, ArrayRecord

    mine = build_strategy(name, ours)
    flower = getattr(flower_strategies, flower_name)(**theirs)
    global_state = {k: v.double() for k, v in random_states(1, 10)[0].items()}
    if name == "fedavgm":
        flower.current_arrays = ArrayRecord({k: Array(v.numpy()) for k, v in global_state.items()})
    for rnd in (1, 2, 3):
        states = [{k: v.double() for k, v in s.items()} for s in random_states(3, 20 + rnd)]
        counts = [4, 1, 7]
        if name != "fedavgm":
            flower.current_arrays = {k: v.numpy() for k, v in global_state.items()}
        arrays, _ = flower.aggregate_train(rnd, [flower_message(s, n) for s, n in zip(states, counts, strict=True)])
        global_state = mine.aggregate(
            global_state, [update(i, s, n) for i, (s, n) in enumerate(zip(states, counts, strict=True))], rnd
        )
        for key, value in arrays.items():
            np.testing.assert_allclose(global_state[key].numpy(), value.numpy(), rtol=1e-10, atol=1e-12)


def test_fedadam_without_bias_correction_is_the_papers_step_by_hand():
    strategy = build_strategy(
        "fedadam", {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001, "bias_correction": False}
    )
    x = {"w": torch.tensor([0.0], dtype=torch.float64)}
    out = strategy.aggregate(x, [update(0, {"w": torch.tensor([2.0], dtype=torch.float64)}, 1)], 1)
    m, v = 0.1 * 2.0, 0.01 * 4.0  # (1 - beta_1) * delta, (1 - beta_2) * delta^2
    assert out["w"].item() == pytest.approx(0.1 * m / (v**0.5 + 0.001))


def test_server_optimizer_state_survives_a_checkpoint(tmp_path):
    from fedpeft.reporting.checkpoint import Checkpoint, list_checkpoints, load_checkpoint, save_checkpoint

    first = build_strategy("fedadam", {"eta": 0.1})
    g = random_states(1, 5)[0]
    g = first.aggregate(g, [update(0, s, 2) for s in random_states(2, 6)], 1)
    save_checkpoint(tmp_path, Checkpoint(1, g, first.state_dict(), {}), keep=1)
    second = build_strategy("fedadam", {"eta": 0.1})
    second.load_state_dict(load_checkpoint(list_checkpoints(tmp_path)[-1]).strategy_state)
    nxt = [update(0, s, 2) for s in random_states(2, 7)]
    a, b = first.aggregate(g, nxt, 2), second.aggregate(g, nxt, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = build_strategy("fedadam", {"eta": 0.1}).aggregate(g, nxt, 2)
    assert not all(torch.equal(a[k], fresh[k]) for k in a)  # the moments matter


def test_proximal_term_adds_mu_times_the_distance_to_the_global_state():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.5, 0.5])
    fresh = torch.nn.Parameter(torch.tensor([3.0]))  # no gradient yet: the term alone
    ProximalTerm(0.1, {"p": torch.tensor([0.0, 1.0]), "q": torch.tensor([1.0])}).correct_gradients({"p": p, "q": fresh})
    torch.testing.assert_close(p.grad, torch.tensor([0.5 + 0.1 * 1.0, 0.5 + 0.1 * -3.0]))
    torch.testing.assert_close(fresh.grad, torch.tensor([0.2]))


def scaffold_context(n_clients: int, lr: float = 0.1, schedule: str = "constant"):
    from fedpeft.fl.client_round import LocalTrainingArgs
    from fedpeft.fl.strategies import ServerContext

    args = LocalTrainingArgs(
        epochs=None, max_steps=4, batch_size=1, micro_batch_size=1, lr=lr, schedule=schedule,
        warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=None, mask_prompt=True, pad_id=0,
    )  # fmt: skip
    return ServerContext(
        model=None, args=args, seed=0, server_data=[], client_val={i: [] for i in range(n_clients)},
        client_categories={}, loss=None, probabilities=None,
    )  # fmt: skip


def test_scaffold_control_variates_by_hand():
    x = random_states(1, 7)[0]
    ys = random_states(3, 8)
    strategy = build_strategy("scaffold")
    strategy.bind(scaffold_context(n_clients=6, lr=0.1))
    updates = [ClientUpdate(i, y, n, 4, 0.0, 0.0) for i, (y, n) in enumerate(zip(ys, [1, 2, 5], strict=True))]
    # Round 1: no variates yet, so the hook changes nothing and the server step is FedAvg's mean.
    hook = strategy.client_hook(0, x)
    assert all(float(v.abs().max()) == 0.0 for v in hook.correction.values())
    new_x = strategy.aggregate(x, updates, 1)
    for k in x:
        expected_mean = (1 * ys[0][k] + 2 * ys[1][k] + 5 * ys[2][k]) / 8
        torch.testing.assert_close(new_x[k], expected_mean, rtol=1e-6, atol=1e-6)
    # Option II with a constant LR of 0.1 over 4 steps: c_i = (x - y_i) / 0.4; c = (3 / 6) * mean_i c_i.
    for i, y in enumerate(ys):
        for k in x:
            torch.testing.assert_close(strategy.c_clients[i][k], (x[k].double() - y[k].double()) / 0.4)
    for k in x:
        mean_ci = sum((x[k].double() - y[k].double()) / 0.4 for y in ys) / 3
        torch.testing.assert_close(strategy.c[k], 0.5 * mean_ci)
    # Round 2: client 1's gradients are shifted by c - c_1; a new client 4 by c - 0.
    params = {k: torch.nn.Parameter(torch.zeros(v.shape)) for k, v in x.items()}
    for p in params.values():
        p.grad = torch.ones_like(p)
    strategy.client_hook(1, new_x).correct_gradients(params)
    for k, p in params.items():
        torch.testing.assert_close(p.grad.double(), 1 + strategy.c[k] - strategy.c_clients[1][k], rtol=1e-6, atol=1e-6)
    fresh = strategy.client_hook(4, new_x).correction
    assert all(torch.allclose(fresh[k].double(), strategy.c[k], atol=1e-6) for k in x)
    # The variates survive a checkpoint round trip.
    again = build_strategy("scaffold")
    again.load_state_dict(strategy.state_dict())
    assert again.c_clients.keys() == strategy.c_clients.keys()
    assert all(torch.equal(again.c[k], strategy.c[k]) for k in x)


def test_scaffold_summed_learning_rate_follows_the_schedule():
    strategy = build_strategy("scaffold")
    strategy.bind(scaffold_context(n_clients=2, lr=0.2, schedule="linear"))
    # 4 linear-decay steps without warm-up: factors 1, 3/4, 1/2, 1/4.
    assert strategy._summed_lr(4) == pytest.approx(0.2 * (1 + 0.75 + 0.5 + 0.25))
