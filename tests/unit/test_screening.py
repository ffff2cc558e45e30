"""Screening client updates: which returned states a round may aggregate, and when a round has too few."""

from __future__ import annotations

import pytest
import torch

from fedpeft.config import ConfigError, load_config
from fedpeft.fl.screening import TooFewUpdatesError, check_enough_updates, update_problem
from fedpeft.testing import FAULT_ENV, apply_fault, injected_fault

SENT = {"a.lora_A": torch.zeros(2, 4), "a.lora_B": torch.zeros(4, 2), "steps": torch.zeros(1, dtype=torch.long)}


def test_an_update_like_the_sent_state_passes():
    update = {k: v + 1 for k, v in SENT.items()}
    assert update_problem(update, SENT) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda u: {k: v for k, v in u.items() if k != "a.lora_B"}, "missing ['a.lora_B']"),
        (lambda u: u | {"b.lora_A": torch.zeros(1)}, "unexpected ['b.lora_A']"),
        (lambda u: u | {"a.lora_A": torch.zeros(3, 4)}, "a.lora_A has shape (3, 4), the adapter's is (2, 4)"),
        (lambda u: u | {"a.lora_B": torch.tensor([[0.0, float("nan")]] * 4)}, "a.lora_B has 4 non-finite"),
        (lambda u: u | {"a.lora_A": torch.full((2, 4), float("inf"))}, "a.lora_A has 8 non-finite"),
    ],
)
def test_mis_shaped_or_non_finite_updates_are_rejected_with_the_reason(change, expected):
    problem = update_problem(change(dict(SENT)), SENT)
    assert problem is not None and expected in problem


def test_too_few_usable_updates_name_every_failed_client():
    check_enough_updates(3, usable=2, min_clients=2, failed={1: "boom"})
    with pytest.raises(
        TooFewUpdatesError, match=r"round 3: 1 usable .* fl.min_clients=2 \(client 1: boom; client 4: late\)"
    ):
        check_enough_updates(3, usable=1, min_clients=2, failed={4: "late", 1: "boom"})


def test_min_clients_above_the_clients_sampled_per_round_is_a_config_error():
    assert load_config("default", ["fl.clients=4", "fl.fraction=0.5", "fl.min_clients=2"]).fl.min_clients == 2
    with pytest.raises(ConfigError, match=r"fl.min_clients=3 exceeds the 2 client\(s\) sampled per round"):
        load_config("default", ["fl.clients=4", "fl.fraction=0.5", "fl.min_clients=3"])
    with pytest.raises(ConfigError, match="min_clients"):
        load_config("default", ["fl.min_clients=0"])


def test_fault_drills_match_round_and_client(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "raise:2:1, nan:*:0,sleep=0.01:3:*")
    assert injected_fault(2, 1) == "raise"
    assert injected_fault(5, 0) == "nan"
    assert injected_fault(3, 7) == "sleep=0.01"
    assert injected_fault(2, 2) is None
    monkeypatch.delenv(FAULT_ENV)
    assert injected_fault(2, 1) is None


def test_fault_drills_corrupt_as_named_and_screening_catches_them():
    state = {"a.lora_A": torch.ones(2, 4), "a.lora_B": torch.ones(4, 2)}
    assert "non-finite" in update_problem(apply_fault("nan", state), state)
    assert "shape (1, 4)" in update_problem(apply_fault("shape", state), state)
    with pytest.raises(RuntimeError, match="fault drill"):
        apply_fault("raise", state)
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        apply_fault("explode", state)
