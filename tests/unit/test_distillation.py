"""Mutual knowledge distillation (FedKD-LoRA): the loss terms against hand computations, and a few steps
on the built-in micro model that must pull two models' output distributions together, reproducibly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpeft.config import load_config
from fedpeft.evaluation.metrics import output_probabilities
from fedpeft.experiment.run import setup
from fedpeft.fl.distillation import DistillationArgs, attention_loss, distillation_loss, mutual_distillation
from fedpeft.models.state import get_trainable_state, set_trainable_state
from fedpeft.seeding import numpy_rng, torch_rng_scope
from tests.integration.conftest import MICRO

# --- the loss terms --------------------------------------------------------------------------------------


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_distillation(student: np.ndarray, teacher: np.ndarray, t: float) -> float:
    """T^2 * mean over rows of sum_c p_t log(p_t / p_s), p = softmax(logits / T), in float64."""
    log_s, log_t = np_log_softmax(student / t), np_log_softmax(teacher / t)
    p_t = np.exp(log_t)
    return float(t**2 * (p_t * (log_t - log_s)).sum(-1).mean())


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_distillation_loss_is_t_squared_times_the_mean_kl_of_the_teacher_from_the_student(temperature):
    gen = np.random.default_rng(0)
    student, teacher = gen.normal(size=(5, 7)) * 2, gen.normal(size=(5, 7)) * 2
    got = distillation_loss(torch.from_numpy(student).float(), torch.from_numpy(teacher).float(), temperature)
    assert got.ndim == 0
    assert float(got) == pytest.approx(np_distillation(student, teacher, temperature), rel=1e-5)
    # The direction matters: KL(teacher || student), not KL(student || teacher).
    swapped = np_distillation(teacher, student, temperature)
    assert abs(swapped - np_distillation(student, teacher, temperature)) > 1e-3
    assert float(got) != pytest.approx(swapped, rel=1e-3)


def test_distillation_loss_of_two_rows_by_hand():
    student = torch.tensor([[0.0, 0.0], [0.0, np.log(3.0)]])
    teacher = torch.tensor([[np.log(3.0), 0.0], [0.0, 0.0]])
    # Row 0: p_t = (3/4, 1/4), p_s = (1/2, 1/2); row 1: p_t = (1/2, 1/2), p_s = (1/4, 3/4).
    row0 = 0.75 * np.log(0.75 / 0.5) + 0.25 * np.log(0.25 / 0.5)
    row1 = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)
    assert float(distillation_loss(student, teacher, 1.0)) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_distillation_loss_is_zero_for_equal_logits():
    logits = torch.randn(4, 9, generator=torch.Generator().manual_seed(1)) * 5
    assert float(distillation_loss(logits, logits.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_loss_ignores_a_constant_added_to_a_row():
    gen = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(3, 6, generator=gen), torch.randn(3, 6, generator=gen)
    offset = torch.tensor([[10.0], [-4.0], [0.5]])
    base = distillation_loss(student, teacher, 2.0)
    assert float(base) > 1e-3
    torch.testing.assert_close(distillation_loss(student + offset, teacher, 2.0), base, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(distillation_loss(student, teacher - 3 * offset, 2.0), base, rtol=1e-4, atol=1e-5)
    # A shift of one logit (not a whole row) does change it.
    moved = student.clone()
    moved[0, 0] += 1.0
    assert abs(float(distillation_loss(moved, teacher, 2.0)) - float(base)) > 1e-3


def test_distillation_loss_has_a_gradient_that_moves_the_student_to_the_teacher():
    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 5, generator=gen, requires_grad=True), torch.randn(2, 5, generator=gen)
    distillation_loss(student, teacher, 2.0).backward()
    # d/dz_s of T^2 * mean KL = T * (p_s - p_t) / rows
    expected = 2.0 * ((student.detach() / 2).softmax(-1) - (teacher / 2).softmax(-1)) / 2
    torch.testing.assert_close(student.grad, expected, rtol=1e-5, atol=1e-6)


def test_attention_loss_is_the_mse_over_unpadded_query_rows():
    gen = np.random.default_rng(5)
    layers, batch, heads, seq = 2, 2, 3, 4
    mine = [gen.random((batch, heads, seq, seq)) for _ in range(layers)]
    theirs = [gen.random((batch, heads, seq, seq)) for _ in range(layers)]
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])  # example 1 is padded at positions 2 and 3
    squared = [
        (mine[layer][b, h, q, k] - theirs[layer][b, h, q, k]) ** 2
        for layer in range(layers)
        for b in range(batch)
        for h in range(heads)
        for q in range(seq)
        if mask[b, q]
        for k in range(seq)
    ]
    assert len(squared) == layers * heads * seq * 6  # 6 real query rows
    expected = float(np.mean(squared))

    def loss(a, b):
        return float(
            attention_loss([torch.from_numpy(x) for x in a], [torch.from_numpy(x) for x in b], torch.from_numpy(mask))
        )

    assert loss(mine, theirs) == pytest.approx(expected, rel=1e-10)
    # What the padded query rows hold does not count.
    noisy = [m.copy() for m in mine]
    for m in noisy:
        m[1, :, 2:, :] += 100.0
    assert loss(noisy, theirs) == pytest.approx(expected, rel=1e-10)
    assert loss(mine, mine) == 0.0


# --- mutual distillation on the micro model --------------------------------------------------------------


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory):
    """The micro model set up once, with two different trainable states: the initial one and one trained
    for two rounds on client 0 (far enough apart that distillation has a gap to close)."""
    tmp: Path = tmp_path_factory.mktemp("distillation")
    config = load_config("default", [*MICRO, f"output.dir={tmp / 'runs'}"])
    state = setup(config, tmp)
    trained = state.runtime.train_round(1, [0], state.global_state)[0].state
    trained = state.runtime.train_round(2, [0], trained)[0].state
    return state, state.global_state, trained


def short(examples, context: int = 12, response: int = 12):
    """The examples cut to a few prompt and response tokens around the prompt's end: the same kind of rows,
    a fraction of the compute on the CPU."""
    return [
        replace(
            e,
            input_ids=e.input_ids[max(0, e.prompt_len - context) : e.prompt_len + response],
            prompt_len=min(context, e.prompt_len),
        )
        for e in examples
    ]


def kd_args(alpha: float = 1.0, steps: int = 4, attention_weight: float = 0.0) -> DistillationArgs:
    return DistillationArgs(temperature=2.0, alpha=alpha, attention_weight=attention_weight, steps=steps)


def distil(state, student, teacher, examples, kd, rng_key: int = 1):
    seed = state.config.fl.seed
    with torch_rng_scope(seed, "distill", rng_key):
        return mutual_distillation(
            state.model, student, teacher, examples, state.runtime.args, kd, numpy_rng(seed, "distill", rng_key)
        )


def output_kl(state, a, b, examples) -> float:
    """Mean over scored positions of KL(p_a || p_b) of the two states' output distributions."""
    args = state.runtime.args
    probs = []
    for trainable in (a, b):
        set_trainable_state(state.model, trainable)
        probs.append(output_probabilities(state.model, examples, 16, args.pad_id, args.head).double())
    p, q = probs
    return float((p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log())).sum(-1).mean())


def copies(trainable):
    return {k: v.clone() for k, v in trainable.items()}


def test_mutual_distillation_pulls_the_two_models_together(micro_run):
    state, initial, trained = micro_run
    examples = short(state.data.clients[1].train[:8])
    held_out = short(state.data.clients[1].train[8:16])
    student, teacher = copies(initial), copies(trained)
    before = output_kl(state, student, teacher, held_out)
    assert before > 1e-3, "the trained state must differ from the initial one for this test to mean anything"
    new_student, new_teacher, figures = distil(state, student, teacher, examples, kd_args())
    # Measured on rows distillation did not see, in both directions.
    assert output_kl(state, new_student, new_teacher, held_out) < 0.25 * before
    assert output_kl(state, new_teacher, new_student, held_out) < 0.25 * output_kl(state, teacher, student, held_out)
    # Both models moved, and the inputs were not touched.
    for k in initial:
        assert torch.equal(student[k], initial[k]) and torch.equal(teacher[k], trained[k])
    assert any(not torch.equal(new_student[k], initial[k]) for k in initial)
    assert any(not torch.equal(new_teacher[k], trained[k]) for k in trained)
    assert new_student.keys() == initial.keys()
    assert set(figures) == {"kd_student_loss", "kd_teacher_loss"}
    assert all(np.isfinite(v) and v >= 0 for v in figures.values())  # alpha=1: a mean of KL terms


def test_mutual_distillation_is_deterministic_given_the_rng(micro_run):
    state, initial, trained = micro_run
    examples = short(state.data.clients[0].train[:8])
    first = distil(state, copies(initial), copies(trained), examples, kd_args(alpha=0.5, steps=3))
    second = distil(state, copies(initial), copies(trained), examples, kd_args(alpha=0.5, steps=3))
    for a, b in zip(first[:2], second[:2], strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert first[2] == second[2]
    # Another batch order gives another result, so the rng is what fixes it.
    other = distil(state, copies(initial), copies(trained), examples, kd_args(alpha=0.5, steps=3), rng_key=2)
    assert any(not torch.equal(first[0][k], other[0][k]) for k in first[0])


def test_mutual_distillation_with_attention_maps_restores_the_attention_implementation(micro_run):
    state, initial, trained = micro_run
    inner = state.model.base_model.model
    before = inner.config._attn_implementation
    assert before != "eager", "the micro model must start without eager attention for this test to mean anything"
    examples = short(state.data.clients[0].train[:4])
    student, teacher, figures = distil(
        state, copies(initial), copies(trained), examples, kd_args(steps=1, attention_weight=1.0)
    )
    assert inner.config._attn_implementation == before
    # One step from the same states and batch: the attention term adds a positive MSE to both losses.
    _, _, without = distil(state, copies(initial), copies(trained), examples, kd_args(steps=1))
    assert all(np.isfinite(v) and v > without[k] for k, v in figures.items())
    assert get_trainable_state(state.model).keys() == student.keys() == teacher.keys()


def test_mutual_distillation_needs_examples(micro_run):
    state, initial, trained = micro_run
    with pytest.raises(ValueError, match="needs server data"):
        mutual_distillation(state.model, initial, trained, [], state.runtime.args, kd_args(), np.random.default_rng(0))
