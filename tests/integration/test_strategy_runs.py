"""Every strategy through the real entry point on the micro model; FedProx against FedAvg; server
optimizer state and LoRA product aggregation across an interrupted and resumed run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from fedpeft.config import ConfigError
from fedpeft.experiment import fit as run_module
from fedpeft.experiment.run import RunInterrupted, run_experiment, setup
from fedpeft.fl.strategies import STRATEGIES

FIVE_CLIENTS = ("fl.clients=5", "fl.fraction=1.0", "eval.every=0", "eval.clients=false")
ARGS = {
    "krum": ["fl.strategy_args.byzantine=1"],
    "multikrum": ["fl.strategy_args.byzantine=1"],
    "fedkd": ["data.server_fraction=0.2"],
}


def adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_and_moves_the_adapter(micro_config, name):
    config = micro_config(f"fl.strategy={name}", "fl.rounds=1", *FIVE_CLIENTS, *ARGS.get(name, []))
    run_dir, summary = run_experiment(config, quiet=True)
    assert summary["status"] == "completed" and summary["final_eval"]["loss"] > 0
    start = setup(config, run_dir).global_state
    checkpoint = last_checkpoint(run_dir)
    if STRATEGIES[name].personalised:
        # Every client has its own trained state and its own PEFT adapter directory.
        assert sorted(checkpoint.client_states) == list(range(5))
        for cid, trained in checkpoint.client_states.items():
            assert any(not torch.equal(start[k], trained[k]) for k in start)
            saved = load_file(str(run_dir / "adapter" / f"client-{cid}" / "adapter_model.safetensors"))
            assert len(saved) == len(trained)
    else:
        assert not checkpoint.client_states
        assert any(not torch.equal(start[k], checkpoint.global_state[k]) for k in start)


def last_checkpoint(run_dir):
    from fedpeft.reporting.checkpoint import list_checkpoints, load_checkpoint

    return load_checkpoint(list_checkpoints(run_dir)[-1])


def test_fedprox_with_mu_zero_is_fedavg_and_mu_pulls_clients_to_the_global_state(micro_config, tmp_path):
    fedavg_dir, _ = run_experiment(micro_config("fl.strategy=fedavg"), quiet=True)
    prox_dir, _ = run_experiment(micro_config("fl.strategy=fedprox", "fl.strategy_args.mu=0"), quiet=True)
    a, b = adapter(fedavg_dir), adapter(prox_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)

    def drift(mu: float) -> float:
        state = setup(micro_config("fl.strategy=fedprox", f"fl.strategy_args.mu={mu}", "train.max_steps=8"), tmp_path)
        hook = state.strategy.client_hook(0, state.global_state)
        new = state.runtime.train_round(1, [0], state.global_state, hook_for=lambda cid, start: hook)[0].state
        return sum(float((new[k] - state.global_state[k]).pow(2).sum()) for k in new) ** 0.5

    assert drift(20.0) < 0.7 * drift(0.0)


@pytest.mark.parametrize(
    ("strategy", "mode", "setting"),
    [
        ("fedadam", "product", "fl.strategy_args.eta=0.003"),
        ("fedavgm", "separate", "fl.strategy_args.momentum=0.5"),
        ("scaffold", "separate", "fl.strategy_args.server_lr=1.0"),
    ],
)
def test_interrupted_run_with_server_state_resumes_exactly(micro_config, monkeypatch, strategy, mode, setting):
    config = micro_config("fl.rounds=3", f"fl.strategy={strategy}", f"fl.lora_aggregation={mode}", setting)
    full_dir, _ = run_experiment(config, quiet=True)
    original = run_module.aggregate_round

    def interrupt_in_round_2(strategy_, mode_, global_state, updates, server_round, context=None):
        if server_round == 2:
            raise KeyboardInterrupt
        return original(strategy_, mode_, global_state, updates, server_round, context=context)

    monkeypatch.setattr(run_module, "aggregate_round", interrupt_in_round_2)
    with pytest.raises(RunInterrupted) as info:
        run_experiment(config, quiet=True)
    monkeypatch.setattr(run_module, "aggregate_round", original)
    _, summary = run_experiment(resume_dir=info.value.run_dir, quiet=True)
    assert summary["status"] == "completed"
    a, b = adapter(full_dir), adapter(info.value.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    rounds = [json.loads(x) for x in (full_dir / "metrics.jsonl").read_text().splitlines()]
    residuals = [r.get("lora_residual_max") for r in rounds if r["type"] == "round" and r["round"] > 0]
    assert all(r is not None and 0 <= r < 1 for r in residuals) if mode == "product" else residuals == [None] * 3


def test_strategy_problems_are_config_errors_before_any_run_directory(micro_config, tmp_path):
    for overrides, message in [
        (["fl.strategy=fedmagic"], "valid strategies: .*fedavg"),
        (["fl.strategy=fedprox", "fl.strategy_args.nu=1"], "valid: mu"),
        (["fl.strategy=krum", "fl.clients=4", "fl.fraction=1.0"], "needs at least 2f \\+ 3 = 5"),
        (["fl.strategy=fedtrimmedavg", "fl.clients=4", "fl.fraction=1.0"], "trims nobody"),
    ]:
        with pytest.raises(ConfigError, match=message):
            run_experiment(micro_config(*overrides), quiet=True)
    assert not (tmp_path / "runs").exists()


def test_scaffold_sends_its_control_variates_and_corrects_later_rounds(micro_config):
    fedavg_dir, fedavg = run_experiment(micro_config("fl.strategy=fedavg"), quiet=True)
    scaffold_dir, scaffold = run_experiment(micro_config("fl.strategy=scaffold"), quiet=True)
    assert scaffold["bytes_up"] == 2 * fedavg["bytes_up"] and scaffold["bytes_down"] == 2 * fedavg["bytes_down"]
    losses = [
        [json.loads(x)["train_loss"] for x in (d / "metrics.jsonl").read_text().splitlines() if '"client"' in x]
        for d in (fedavg_dir, scaffold_dir)
    ]
    # Round 1 has no variates yet (identical client rounds); round 2's clients are corrected.
    assert losses[0][:2] == losses[1][:2] and losses[0][2:] != losses[1][2:]
