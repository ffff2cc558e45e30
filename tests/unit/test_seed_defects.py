"""The seed systems' known defects (SEEDS.md, "Defects not to repeat"), one test each.

Each test is named ``test_<id>`` after an entry of :data:`DEFECTS` and quotes the defect in its docstring; it
fails if fedpeft repeated that defect. Where a defect is a design decision rather than a line of code (hard-coded
client counts, the 8-bit PEFT vs fp32 full fine-tuning confound), the test checks the behaviour that prevents it
and says so. A defect already proven by an expensive test elsewhere is listed in :data:`PROVEN_ELSEWHERE`, and
:func:`test_defect_proven_elsewhere_exists` checks that the named test still exists there.

Notable choices:
- The real code paths on a model of a few thousand parameters: a Llama-shaped causal LM with a byte-level BPE
  tokenizer trained on the Dolly fixture (and no pad token, like many hub tokenizers), built once per module
  under ``tmp_path``, so ``setup`` (config -> data -> model -> runtime -> strategy) takes well under a second.
- The global RNGs are never reseeded here either: a test that needs "some other global state" draws numbers.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from fedpeft.config import ConfigError, load_config
from fedpeft.config.schema import DataConfig
from fedpeft.experiment import checks
from fedpeft.experiment import fit as fit_module
from fedpeft.experiment.evaluate import should_evaluate
from fedpeft.experiment.setup import adapt_model, build_data, setup
from fedpeft.fl.client_round import OBJECTIVES, ClientUpdate, lr_factor, train_client_round, warmup_steps
from fedpeft.fl.distillation import DistillationArgs, distillation_loss, mutual_distillation
from fedpeft.fl.lora_aggregation import aggregate_personalised_round, aggregate_round
from fedpeft.fl.strategies import STRATEGIES, Aggregate, Mixing, Strategy, build_strategy
from fedpeft.fl.strategies import fedkd as fedkd_module
from fedpeft.fl.strategies.fedprox import ProximalTerm
from fedpeft.models.base import load_base_model, load_tokenizer
from fedpeft.models.state import get_trainable_state, set_trainable_state
from fedpeft.reporting import run_dir as rd
from fedpeft.runtime.local import LocalRuntime
from fedpeft.seeding import numpy_rng, torch_rng_scope
from fedpeft.tensors.aggregate import coordinate_median

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

# --- which defect is proven where ------------------------------------------------------------------------

DEFECTS = [
    # S0 collaborative software learning
    "s0_fedprox_adds_the_proximal_term",
    "s0_robust_strategies_refuse_two_clients",
    "s0_client_data_is_split_once_and_kept_every_round",
    "s0_clone_threshold_is_chosen_on_validation_not_test",
    "s0_lr_warmup_ends_and_the_lr_then_decays",
    "s0_vocabulary_never_grows_and_every_trained_tensor_is_exchanged",
    "s0_client_count_and_paths_come_from_the_config",
    # S1 FedKDLoRA
    "s1_distillation_is_kl_on_log_softmax_with_temperature_and_alpha",
    "s1_clients_are_weighted_by_examples_not_batches",
    "s1_teacher_is_trained_once",
    "s1_server_rows_come_fair_or_unfair_as_configured",
    "s1_every_random_draw_follows_the_seed",
    # S2 Astraios
    "s2_full_fine_tuning_is_refused_on_a_quantised_base",
    "s2_loss_is_on_responses_by_default",
    "s2_packing_keeps_documents_apart",
    "s2_gradient_checkpointing_flag_means_what_it_says",
    # S3 personalised collaborative fine-tuning
    "s3_static_trust_weights_are_computed_and_finite",
    "s3_dynamic_token_without_reference_rows_is_refused_before_round_1",
    "s3_product_aggregation_averages_ba",
    # S4 Shepherd / FedIT
    "s4_fraction_never_silently_trains_one_client_per_round",
    "s4_evaluation_runs_when_configured_and_always_at_the_end",
    "s4_resume_option_reaches_the_run",
    "s4_no_global_reseeding",
    "s4_chat_ui_never_opens_a_public_share_link",
    # Across all five
    "all_strategies_share_one_aggregation_api",
]
"""One id per defect of SEEDS.md; the test that proves it is ``test_<id>`` here or the entry in PROVEN_ELSEWHERE."""

PROVEN_ELSEWHERE = {
    "s0_clone_threshold_is_chosen_on_validation_not_test": (
        "tests/integration/test_run.py::test_clone_threshold_is_chosen_on_validation_not_test"
    ),
}
"""Defects proven by a test that needs a training run: id -> ``path::test_function``."""


def test_every_defect_is_covered_exactly_once():
    """Every id of DEFECTS has a test here or an entry in PROVEN_ELSEWHERE (not both), and every seed-defect
    test of this module is listed in DEFECTS."""
    here = {name.removeprefix("test_") for name, obj in globals().items() if name.startswith("test_") and callable(obj)}
    assert len(DEFECTS) == len(set(DEFECTS))
    for defect in DEFECTS:
        assert (defect in here) != (defect in PROVEN_ELSEWHERE), defect
    assert set(PROVEN_ELSEWHERE) <= set(DEFECTS)
    seed_tests = {name for name in here if name.startswith(("s0_", "s1_", "s2_", "s3_", "s4_", "all_"))}
    assert seed_tests <= set(DEFECTS), seed_tests - set(DEFECTS)


@pytest.mark.parametrize(("defect", "where"), sorted(PROVEN_ELSEWHERE.items()))
def test_defect_proven_elsewhere_exists(defect, where):
    path, _, name = where.partition("::")
    file = REPO / path
    assert file.is_file(), f"{defect}: {path} is gone"
    tree = ast.parse(file.read_text(encoding="utf-8"))
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert name in defined, f"{defect}: {path} no longer defines {name}"


# --- a tiny offline world --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory: a 1-layer Llama (hidden 16) and a 320-token byte-level BPE tokenizer trained on the
    Dolly fixture, with end-of-sequence but no pad token. Weights come from a private torch generator."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-model")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((FIXTURES / "dolly.jsonl").read_text(encoding="utf-8").splitlines(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    return out


TINY = [
    f"data.source={FIXTURES / 'dolly.jsonl'}",
    "data.schema=dolly",
    "data.task=instruction",
    "data.max_rows=null",
    "data.test_size=4",
    "data.partition=iid",
    "data.max_length=128",
    "fl.clients=3",
    "fl.fraction=1.0",
    "fl.rounds=2",
    "train.max_steps=3",
    "train.batch_size=2",
    "train.micro_batch_size=2",
    "train.lr=0.01",
    "peft.r=2",
    "peft.alpha=4",
    "peft.target_modules=[q_proj, v_proj]",
    "eval.batch_size=8",
]


def tiny_config(model_dir: Path, tmp_path: Path, *overrides: str):
    return load_config("default", [f"model.name={model_dir}", *TINY, f"output.dir={tmp_path / 'runs'}", *overrides])


def tiny_state(model_dir: Path, tmp_path: Path, *overrides: str):
    return setup(tiny_config(model_dir, tmp_path, *overrides), tmp_path)


QUIET = SimpleNamespace(start_client=lambda *_: None, client_step=lambda *_: None)
"""The progress display the round loop's train phase reports to, silenced."""


def round_loop_train(state, rnd: int, client_ids: list[int]) -> list[ClientUpdate]:
    """The round loop's train phase (``fit.train``) for one round."""
    failed: dict[int, str] = {}
    updates = fit_module.train(state, rnd, client_ids, QUIET, failed)
    assert not failed
    return updates


def sq_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a)


def same_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def disturb_global_rngs(n: int) -> None:
    """Move torch's, numpy's and Python's global generators by n draws (without reseeding them)."""
    torch.rand(n)
    np.random.random(n)
    for _ in range(n):
        random.random()


# --- S0 ----------------------------------------------------------------------------------------------------


def test_s0_fedprox_adds_the_proximal_term(tiny, tmp_path, monkeypatch):
    """S0: "FedProx sent mu but clients never added the proximal term (it was FedAvg)".

    Through the round loop's train phase: at every optimizer step of the client round, the gradient grows by
    exactly mu * (theta - theta_global), and the update ends closer to the global state than FedAvg's."""
    mu = 5.0
    state = tiny_state(tiny, tmp_path, "fl.strategy=fedprox", f"fl.strategy_args={{mu: {mu}}}", "train.max_steps=4")
    start = {k: v.clone() for k, v in state.global_state.items()}
    added: list[float] = []
    original = ProximalTerm.correct_gradients

    def recording(self, params):
        before = {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in params.items()}
        original(self, params)
        for n, p in params.items():
            expected = mu * (p.detach() - start[n])
            torch.testing.assert_close(p.grad - before[n], expected, rtol=1e-5, atol=1e-7)
        added.append(max(float((mu * (p.detach() - start[n])).abs().max()) for n, p in params.items()))

    monkeypatch.setattr(ProximalTerm, "correct_gradients", recording)
    (prox,) = round_loop_train(state, 1, [0])
    assert len(added) == prox.num_steps == 4  # once per optimizer step
    assert added[0] == 0.0 and max(added) > 0  # zero at the global state, then pulling back
    state.strategy = build_strategy("fedavg")
    (plain,) = round_loop_train(state, 1, [0])  # same round and client: same batches, same dropout
    assert len(added) == 4  # FedAvg sends no proximal term
    assert sq_distance(prox.state, start) < sq_distance(plain.state, start)


def test_s0_robust_strategies_refuse_two_clients():
    """S0: "robust strategies with 2 clients silently reduce to a mean".

    Every strategy of the robust module refuses a run that samples 2 clients per round, before anything is
    loaded (a ConfigError naming it), and accepts one that samples 7. (Why: the median of two is their mean.)"""
    gen = torch.Generator().manual_seed(1)
    two = [{"w": torch.randn(5, generator=gen)} for _ in range(2)]
    torch.testing.assert_close(coordinate_median(two)["w"], (two[0]["w"] + two[1]["w"]) / 2)
    robust = [name for name, cls in STRATEGIES.items() if cls.__module__.endswith(".robust")]
    assert {"fedmedian", "fedtrimmedavg", "krum", "multikrum"} <= set(robust)
    for name in robust:
        with pytest.raises(ConfigError, match=name):
            checks.setup_checks(load_config("default", ["fl.clients=2", "fl.fraction=1.0", f"fl.strategy={name}"]))
        checks.setup_checks(load_config("default", ["fl.clients=7", "fl.fraction=1.0", f"fl.strategy={name}"]))


def test_s0_client_data_is_split_once_and_kept_every_round(tiny, tmp_path, monkeypatch):
    """S0: "client data re-sampled every round".

    The split is a pure function of the config and its seed (another seed, another split), and the round loop
    trains each client on the same rows, the ones the split gave it, in every round."""
    config = tiny_config(tiny, tmp_path)
    tokenizer = load_tokenizer(str(tiny))
    first, again = build_data(config, tokenizer), build_data(config, tokenizer)
    assert [(c.train, c.val) for c in first.clients] == [(c.train, c.val) for c in again.clients]
    other = build_data(tiny_config(tiny, tmp_path, "fl.seed=1"), tokenizer)
    assert [c.train for c in other.clients] != [c.train for c in first.clients]

    import fedpeft.runtime.local as local

    seen: dict[tuple[int, int], list] = {}
    real = local.train_client_round

    def recording(model, client_id, global_state, examples, *args, **kwargs):
        seen[(rnd, client_id)] = list(examples)
        return real(model, client_id, global_state, examples, *args, **kwargs)

    monkeypatch.setattr(local, "train_client_round", recording)
    state = setup(config, tmp_path)
    for rnd in (1, 2, 3):
        round_loop_train(state, rnd, [0, 1, 2])
    for client in first.clients:
        cid = client.client_id
        assert seen[(1, cid)] == seen[(2, cid)] == seen[(3, cid)] == client.train


def test_s0_lr_warmup_ends_and_the_lr_then_decays(tiny, tmp_path):
    """S0: "LR warm-up equal to total steps (LR only rises)".

    The learning rates the client round's optimizer really steps with, even at train.warmup_ratio=0.99: they
    rise, peak at train.lr before the last step, then fall, never to 0. The same holds for every round length
    and warm-up ratio of the schedule the client round uses."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    state = tiny_state(tiny, tmp_path, "train.max_steps=6", "train.warmup_ratio=0.99", "train.schedule=linear")
    lrs: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, *_: lrs.append(opt.param_groups[0]["lr"]))
    try:
        state.runtime.train_round(1, [0], state.global_state)
    finally:
        handle.remove()
    assert len(lrs) == 6
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(0.01) and peak < 5
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))  # warm-up rises
    assert lrs[-1] < max(lrs) and min(lrs) > 0
    for schedule in ("linear", "cosine"):
        for total in range(2, 41):
            for ratio in (0.1, 0.5, 0.9, 0.99):
                n_warmup = warmup_steps(total, ratio)
                factors = [lr_factor(s, total, n_warmup, schedule) for s in range(total)]
                assert n_warmup < total and factors.index(max(factors)) < total - 1, (schedule, total, ratio)
                assert factors[-1] < max(factors) and min(factors) > 0


def test_s0_vocabulary_never_grows_and_every_trained_tensor_is_exchanged(tiny, tmp_path):
    """S0: "new token embeddings resized after LoRA and never exchanged".

    A design decision: fedpeft adds no tokens (a tokenizer without a pad token pads with its end-of-sequence
    token), so the embedding matrix is never resized; and what travels is every trainable tensor, so nothing a
    client trains stays behind: the tensors a client round changes are all in its update, a new classification
    head included."""
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tiny).pad_token is None  # the case S0 met by adding a token
    vocabulary = len(AutoTokenizer.from_pretrained(tiny))
    state = tiny_state(tiny, tmp_path)
    assert len(state.tokenizer) == vocabulary == state.model.get_input_embeddings().weight.shape[0]
    assert state.tokenizer.pad_token_id == state.tokenizer.eos_token_id
    before = {n: p.detach().clone() for n, p in state.model.named_parameters()}
    (update,) = state.runtime.train_round(1, [0], state.global_state)
    changed = {n for n, p in state.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= update.state.keys()
    classifier = load_base_model(str(tiny), head="sequence_classification")
    adapted = adapt_model(tiny_config(tiny, tmp_path), classifier.model, "sequence_classification")
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable == get_trainable_state(adapted).keys()
    assert any(".score." in n for n in trainable)


def test_s0_client_count_and_paths_come_from_the_config(tiny, tmp_path):
    """S0: "hard-coded client counts and paths".

    A design decision: the number of clients is fl.clients (the split, the runtime's clients and the sampler
    follow it), the model and data are read from model.name and data.source (here: files under tmp_path and
    tests/fixtures), and runs are written under output.dir."""
    from fedpeft.fl.sampling import sample_clients

    for n in (2, 5):
        state = tiny_state(tiny, tmp_path, f"fl.clients={n}")
        assert [c.client_id for c in state.data.clients] == list(range(n))
        assert sorted(state.runtime.client_examples) == list(range(n))
        rows = [e.input_ids for c in state.data.clients for e in c.train + c.val]
        assert len(rows) == len(set(rows))  # disjoint
        assert sample_clients(n, 1.0, numpy_rng(0, "sampling", 1)) == list(range(n))
    config = tiny_config(tiny, tmp_path / "elsewhere")
    run_dir = rd.new_run_dir(Path(config.output.dir), config.recipe)
    assert run_dir.is_dir() and run_dir.parent == tmp_path / "elsewhere" / "runs"


# --- S1 ----------------------------------------------------------------------------------------------------


def test_s1_distillation_is_kl_on_log_softmax_with_temperature_and_alpha(tiny, tmp_path):
    """S1: "KL on raw logits (use log_softmax with temperature T and a weight alpha)".

    The distillation term against torch's kl_div on log_softmax(z / T) times T^2 (and by hand), which a KL of
    the raw logits is not; and alpha weighs it: at alpha=0 the student's distillation step does not depend on
    the teacher at all, at alpha=0.5 it does."""
    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(6, 9, generator=gen) * 3, torch.randn(6, 9, generator=gen) * 3
    for t in (0.5, 1.0, 2.0, 4.0):
        reference = F.kl_div(F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="batchmean")
        p = torch.softmax(teacher.double() / t, -1)
        by_hand = (p * (p.log() - torch.log_softmax(student.double() / t, -1))).sum(-1).mean() * t**2
        got = distillation_loss(student, teacher, t)
        torch.testing.assert_close(got, reference * t**2)
        torch.testing.assert_close(got.double(), by_hand, rtol=1e-5, atol=1e-6)
    raw = F.kl_div(student, teacher, reduction="batchmean")
    assert not torch.allclose(distillation_loss(student, teacher, 1.0), raw)

    state = tiny_state(tiny, tmp_path, "data.server_fraction=0.2", "peft.dropout=0")
    (trained,) = state.runtime.train_round(1, [0], state.global_state)
    start = {k: v.clone() for k, v in state.global_state.items()}

    def distilled_student(teacher_state, alpha):
        kd = DistillationArgs(temperature=2.0, alpha=alpha, attention_weight=0.0, steps=2)
        with torch_rng_scope(0, "distill", 1):
            out, _, _ = mutual_distillation(
                state.model, start, teacher_state, state.data.server, state.args, kd, numpy_rng(0, "distill", 1)
            )
        return out

    assert same_states(distilled_student(start, 0.0), distilled_student(trained.state, 0.0))
    assert not same_states(distilled_student(start, 0.5), distilled_student(trained.state, 0.5))


def test_s1_clients_are_weighted_by_examples_not_batches(tiny, tmp_path):
    """S1: "weights by batch count instead of example count".

    Two clients of 2 and 7 rows (1 and 4 batches of 2, the same 2 optimizer steps) trained by the local
    runtime: every strategy that averages (fedavg, fedprox) weighs their states 2 : 7."""
    state = tiny_state(tiny, tmp_path, "train.max_steps=2", "train.batch_size=2", "train.micro_batch_size=2")
    rows = [e for c in state.data.clients for e in c.train]
    runtime = LocalRuntime(state.model, {0: rows[:2], 1: rows[2:9]}, state.args, seed=0)
    updates = runtime.train_round(1, [0, 1], state.global_state)
    assert [u.num_examples for u in updates] == [2, 7] and [u.num_steps for u in updates] == [2, 2]
    averaging = [name for name, cls in STRATEGIES.items() if cls.stackable]
    assert {"fedavg", "fedprox"} <= set(averaging)
    a, b = (u.state for u in updates)
    for name in averaging:
        got = build_strategy(name).aggregate(state.global_state, updates, 1)
        gap = 0.0
        for k in a:
            expected = (2 * a[k].double() + 7 * b[k].double()) / 9
            by_batches = (1 * a[k].double() + 4 * b[k].double()) / 5
            torch.testing.assert_close(got[k].double(), expected, rtol=1e-6, atol=1e-7)
            gap = max(gap, float((got[k].double() - by_batches).abs().max()))
        assert gap > 1e-4  # the two weightings differ on these clients, and the example counts won


def test_s1_teacher_is_trained_once(tiny, tmp_path, monkeypatch):
    """S1: "teacher retrained every round on the same data".

    Three FedKD rounds train the teacher once; a strategy restored from the checkpointed state keeps that
    teacher and does not train it again."""
    calls: list[int] = []
    real = fedkd_module.train_teacher

    def counting(context, start, epochs):
        calls.append(1)
        return real(context, start, epochs)

    monkeypatch.setattr(fedkd_module, "train_teacher", counting)
    args = "fl.strategy_args={teacher_epochs: 1, distill_epochs: 1}"
    state = tiny_state(tiny, tmp_path, "fl.strategy=fedkd", args, "data.server_fraction=0.2", "train.max_steps=1")
    current = state.global_state
    for rnd in (1, 2, 3):
        updates = state.runtime.train_round(rnd, [0, 1, 2], current)
        current = state.strategy.aggregate(current, updates, rnd, context=state.context).state
    assert len(calls) == 1
    restored = build_strategy("fedkd", state.config.fl.strategy_args)
    restored.load_state_dict(state.strategy.state_dict())
    assert same_states(restored.teacher, state.strategy.teacher)
    restored.aggregate(current, state.runtime.train_round(4, [0, 1, 2], current), 4, context=state.context)
    assert len(calls) == 1


def test_s1_server_rows_come_fair_or_unfair_as_configured(tiny, tmp_path):
    """S1: "KD gets 20% more data than baselines (report both fair and unfair settings)".

    data.server_split=held_out (the published, unfair setting) gives the server rows no client holds;
    data.server_split=shared (the fair one) samples them from the clients' own training rows and leaves every
    client's split as it is without a server, so FedKD sees no row the baselines do not."""
    tokenizer = load_tokenizer(str(tiny))
    none = build_data(tiny_config(tiny, tmp_path), tokenizer)
    held = build_data(tiny_config(tiny, tmp_path, "data.server_fraction=0.25"), tokenizer)
    shared = build_data(tiny_config(tiny, tmp_path, "data.server_fraction=0.25", "data.server_split=shared"), tokenizer)
    assert held.server and shared.server
    assert not {e.input_ids for e in held.server} & {e.input_ids for c in held.clients for e in c.train + c.val}
    assert [(c.train, c.val) for c in shared.clients] == [(c.train, c.val) for c in none.clients]
    assert {e.input_ids for e in shared.server} <= {e.input_ids for c in none.clients for e in c.train}


def test_s1_every_random_draw_follows_the_seed(tiny, tmp_path):
    """S1: "nothing seeded".

    The split, the adapter's initialisation, the clients' training (with dropout) and FedKD's teacher and
    distillation all follow fl.seed: whatever state the global generators are in, the same seed gives the same
    bits, and another seed gives another split, start and aggregate."""

    def one_round(disturb: int, *overrides: str):
        disturb_global_rngs(disturb)
        args = "fl.strategy_args={teacher_epochs: 1, distill_epochs: 1}"
        kd = ("fl.strategy=fedkd", args, "data.server_fraction=0.2", "train.max_steps=1")
        state = tiny_state(tiny, tmp_path, *kd, *overrides)
        disturb_global_rngs(disturb)
        updates = state.runtime.train_round(1, [0, 1, 2], state.global_state)
        aggregate = state.strategy.aggregate(state.global_state, updates, 1, context=state.context)
        return [c.train for c in state.data.clients], state.global_state, updates, aggregate.state

    split, start, updates, aggregate = one_round(1, "peft.dropout=0.2")
    split_again, start_again, updates_again, aggregate_again = one_round(7, "peft.dropout=0.2")
    assert split == split_again and same_states(start, start_again) and same_states(aggregate, aggregate_again)
    assert all(same_states(a.state, b.state) for a, b in zip(updates, updates_again, strict=True))
    other_split, other_start, _, other_aggregate = one_round(1, "peft.dropout=0.2", "fl.seed=1")
    assert other_split != split
    assert not same_states(other_start, start) and not same_states(other_aggregate, aggregate)


# --- S2 ----------------------------------------------------------------------------------------------------


def test_s2_full_fine_tuning_is_refused_on_a_quantised_base():
    """S2: "8-bit PEFT vs fp32 FFT confounds the comparison".

    A design decision: full fine-tuning cannot run on a quantised base (the config is refused, naming both
    keys), so a comparison of methods cannot mix an 8-bit adapter run with a full-precision full one by
    quantising only some of them; adapters on a quantised base stay allowed."""
    for quant in ("8bit", "4bit"):
        with pytest.raises(ConfigError, match=rf"peft.method=full.*model.quantization={quant}"):
            load_config("default", [f"model.quantization={quant}", "peft.method=full"])
        assert load_config("default", [f"model.quantization={quant}", "peft.method=lora"]).model.quantization == quant


def test_s2_loss_is_on_responses_by_default(tiny, tmp_path):
    """S2: "loss on prompts by default".

    By default (data.train_on_inputs=false) a client round's loss is the cross-entropy of the response tokens
    only: the first step's loss equals it computed by hand, which the loss over every token does not."""
    assert DataConfig().train_on_inputs is False
    state = tiny_state(tiny, tmp_path, "peft.dropout=0", "train.max_steps=1", "train.batch_size=4")
    assert state.args.mask_prompt
    examples = state.data.clients[0].train[:4]
    assert all(0 < e.prompt_len < len(e.input_ids) for e in examples)
    update = train_client_round(state.model, 0, state.global_state, examples, state.args, numpy_rng(0, "train", 1, 0))
    set_trainable_state(state.model, state.global_state)
    response = everything = 0.0
    n_response = n_all = 0
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e.input_ids])
            losses = F.cross_entropy(state.model(input_ids=ids).logits[0, :-1].double(), ids[0, 1:], reduction="none")
            response += float(losses[e.prompt_len - 1 :].sum())
            n_response += len(e.input_ids) - e.prompt_len
            everything += float(losses.sum())
            n_all += len(e.input_ids) - 1
    assert update.train_loss == pytest.approx(response / n_response, rel=1e-5)
    assert update.train_loss != pytest.approx(everything / n_all, rel=1e-3)


def test_s2_packing_keeps_documents_apart(tiny, tmp_path):
    """S2: "packing without document boundaries".

    With train.packing the first step's loss equals the padded batch's (each document sees only itself); the
    same packed row without restarting positions (documents attending to each other) would not."""
    packed = ("train.packing=true", "data.max_length=400", "train.batch_size=4", "train.micro_batch_size=4")
    state = tiny_state(tiny, tmp_path, *packed, "peft.dropout=0", "train.max_steps=1")
    assert state.args.pack_capacity == 400
    examples = state.data.clients[0].train[:4]
    padded = replace(state.args, pack_capacity=None)
    rng = numpy_rng(0, "train", 1, 0)
    packed_loss = train_client_round(state.model, 0, state.global_state, examples, state.args, rng).train_loss
    rng = numpy_rng(0, "train", 1, 0)
    padded_loss = train_client_round(state.model, 0, state.global_state, examples, padded, rng).train_loss
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    from fedpeft.tensors.batching import collate_packed_causal_lm

    batch = collate_packed_causal_lm(examples, state.args.pad_id, True, capacity=400)
    assert len(batch["input_ids"]) < len(examples)  # documents really share rows
    set_trainable_state(state.model, state.global_state)
    objective = OBJECTIVES["causal_lm"]
    with torch.no_grad():
        bounded = float(objective.loss_sum(state.model, batch)) / objective.count(batch)
        unbounded = {k: v for k, v in batch.items() if k != "position_ids"}
        mixed = float(objective.loss_sum(state.model, unbounded)) / objective.count(batch)
    assert bounded == pytest.approx(padded_loss, rel=1e-5)
    assert mixed != pytest.approx(padded_loss, rel=1e-3)


def test_s2_gradient_checkpointing_flag_means_what_it_says(tiny, tmp_path):
    """S2: "an inverted gradient-checkpointing flag".

    train.gradient_checkpointing=true turns checkpointing on in the model that trains; false leaves it off."""
    for flag in (True, False):
        state = tiny_state(tiny, tmp_path, f"train.gradient_checkpointing={str(flag).lower()}")
        assert state.model.get_base_model().is_gradient_checkpointing is flag


# --- S3 ----------------------------------------------------------------------------------------------------


def test_s3_static_trust_weights_are_computed_and_finite(tiny, tmp_path):
    """S3: '"static" crashes (result never assigned)'.

    A personalised round with trust weights=static on Dolly's categories: W is the row-normalised D D^T of the
    clients' category distributions (by hand), and every client's next state is finite and its row's mix."""
    state = tiny_state(tiny, tmp_path, "fl.strategy=trust", "fl.strategy_args={weights: static}")
    updates = round_loop_train(state, 1, [0, 1, 2])
    states, weights, _ = aggregate_personalised_round(state.strategy, "separate", updates, 1, context=state.context)
    counts = [state.data.clients[u.client_id].categories for u in updates]
    names = sorted({c for row in counts for c in row})
    d = np.array([[row.get(c, 0) for c in names] for row in counts], dtype=np.float64)
    d /= d.sum(1, keepdims=True)
    expected = d @ d.T
    expected /= expected.sum(1, keepdims=True)
    torch.testing.assert_close(weights, torch.from_numpy(expected))
    for i, mixed in enumerate(states):
        for k, v in mixed.items():
            assert torch.isfinite(v).all()
            by_hand = sum(expected[i, j] * updates[j].state[k].double() for j in range(len(updates)))
            torch.testing.assert_close(v.double(), by_hand, rtol=1e-5, atol=1e-7)


def test_s3_dynamic_token_without_reference_rows_is_refused_before_round_1(tiny, tmp_path):
    """S3: "dynamic-token crashes without a reference split".

    Without server rows (the shared reference set) setup refuses the run, naming data.server_fraction; with
    them, a personalised round computes finite weights whose rows sum to 1."""
    args = "fl.strategy_args={weights: dynamic-token, reference_rows: 2}"
    with pytest.raises(ConfigError, match="data.server_fraction"):
        tiny_state(tiny, tmp_path, "fl.strategy=trust", args)
    state = tiny_state(tiny, tmp_path, "fl.strategy=trust", args, "data.server_fraction=0.2")
    updates = round_loop_train(state, 1, [0, 1, 2])
    _, weights, _ = aggregate_personalised_round(state.strategy, "separate", updates, 1, context=state.context)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(3, dtype=weights.dtype))


def test_s3_product_aggregation_averages_ba():
    """S3: "A and B averaged separately although avg(B)avg(A) != avg(BA)".

    fl.lora_aggregation=product aggregates the products: with fedavg, the new pair's B A is the example-
    weighted mean of the clients' B A (exact here: a rank-2 mean of 2 x 5 products), which averaging A and B
    separately misses."""
    gen = torch.Generator().manual_seed(5)
    a_key, b_key = "layer.q_proj.lora_A.default.weight", "layer.q_proj.lora_B.default.weight"

    def pair():
        return {
            a_key: torch.randn(2, 5, generator=gen, dtype=torch.float64),
            b_key: torch.randn(2, 2, generator=gen, dtype=torch.float64),
        }

    states, counts = [pair(), pair()], [1, 3]
    updates = [ClientUpdate(i, s, n, 1, 0.0, 0.0) for i, (s, n) in enumerate(zip(states, counts, strict=True))]
    mean_product = sum(n * s[b_key] @ s[a_key] for s, n in zip(states, counts, strict=True)) / 4
    product, figures = aggregate_round(build_strategy("fedavg"), "product", pair(), updates, 1)
    torch.testing.assert_close(product[b_key] @ product[a_key], mean_product)
    assert figures["lora_residual_max"] < 1e-10
    separate, _ = aggregate_round(build_strategy("fedavg"), "separate", pair(), updates, 1)
    assert not torch.allclose(separate[b_key] @ separate[a_key], mean_product, atol=1e-3)


# --- S4 ----------------------------------------------------------------------------------------------------


def test_s4_fraction_never_silently_trains_one_client_per_round():
    """S4: "frac 0.1 of 10 clients picks one client per round".

    A run whose fl.fraction samples a single client out of several is flagged before round 1 for a strategy
    that averages clients, naming fl.fraction and the smallest fraction that samples two (a warning: cross-device
    studies sample few clients on purpose). Two or more per round, one client in all, or a strategy that does
    not average (local) are not flagged; the S4 recipe samples two."""
    import warnings

    with pytest.warns(checks.SingleClientRoundWarning, match=r"fl.fraction=0.1 of fl.clients=10 samples 1 client.*0.2"):
        checks.setup_checks(load_config("default", ["fl.clients=10", "fl.fraction=0.1", "fl.strategy=fedavg"]))
    quiet = [
        ["fl.clients=10", "fl.fraction=0.2", "fl.strategy=fedavg"],
        ["fl.clients=1", "fl.fraction=1.0", "fl.strategy=fedavg"],
        ["fl.clients=10", "fl.fraction=0.1", "fl.strategy=local"],
    ]
    for overrides in quiet:
        with warnings.catch_warnings():
            warnings.simplefilter("error", checks.SingleClientRoundWarning)
            checks.setup_checks(load_config("default", overrides))
    shepherd = load_config("s4-shepherd")
    assert shepherd.fl.clients * shepherd.fl.fraction >= 2


def test_s4_evaluation_runs_when_configured_and_always_at_the_end(tiny, tmp_path):
    """S4: "no evaluation at all".

    A run evaluates before training, every eval.every rounds and always after the last round (eval.every=0
    still evaluates at the end): the records of a 3-round run with eval.every=2 carry metrics for rounds 0, 2
    and 3, and its summary the final ones."""
    import json

    from fedpeft.experiment.run import run_experiment

    config = tiny_config(tiny, tmp_path, "fl.rounds=3", "eval.every=2", "train.max_steps=1")
    run_dir, summary = run_experiment(config, quiet=True)
    rounds = [json.loads(line) for line in (run_dir / rd.METRICS_FILE).read_text().splitlines()]
    evaluated = [r["round"] for r in rounds if r["type"] == "round" and r.get("eval")]
    assert evaluated == [0, 2, 3]
    assert summary["final_eval"] and "loss" in summary["final_eval"]
    for every in range(4):
        for total in range(1, 8):
            cfg = SimpleNamespace(eval=SimpleNamespace(every=every), fl=SimpleNamespace(rounds=total))
            chosen = [r for r in range(1, total + 1) if should_evaluate(cfg, r)]
            assert chosen == sorted({total} | ({r for r in range(1, total + 1) if r % every == 0} if every else set()))


def test_s4_resume_option_reaches_the_run(tmp_path, monkeypatch):
    """S4: "resume argument never used".

    ``fedpeft run --resume DIR`` hands DIR (and any --set) to the experiment as the run to continue, instead
    of starting a new one from a recipe. That the continued run is bit-exact is proven by
    tests/integration/test_run.py::test_resume_after_interrupt_gives_the_same_final_adapter."""
    import fedpeft.experiment.run as run_module
    from fedpeft.cli import app

    calls: list[tuple[tuple, dict]] = []

    def fake_run_experiment(*args, **kwargs):
        calls.append((args, kwargs))
        return tmp_path, {"final_eval": {"loss": 1.0}, "rounds_completed": 3, "peak_rss_mb": 1.0}

    monkeypatch.setattr(run_module, "run_experiment", fake_run_experiment)
    result = CliRunner().invoke(app, ["run", "--resume", str(tmp_path), "--set", "fl.rounds=3", "--quiet"])
    assert result.exit_code == 0, result.output
    ((args, kwargs),) = calls
    assert args == () and kwargs["resume_dir"] == tmp_path and kwargs["overrides"] == ["fl.rounds=3"]
    assert kwargs.get("config") is None


def _unguarded_reseeding(path: Path) -> list[str]:
    """Calls that reseed a global generator (np.random.seed, random.seed, torch[.cuda].manual_seed[_all]) outside
    a ``with ...fork_rng(...)`` block, as 'file:line'."""
    found: list[str] = []

    def fork_rng(item: ast.withitem) -> bool:
        call = item.context_expr
        return isinstance(call, ast.Call) and ast.unparse(call.func).endswith("fork_rng")

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.With | ast.AsyncWith):
            guarded = guarded or any(fork_rng(item) for item in node.items)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and "seed" in node.func.attr:
            name = ast.unparse(node.func)
            if name in ("np.random.seed", "numpy.random.seed", "random.seed"):
                found.append(f"{path}:{node.lineno}")
            if name in ("torch.manual_seed", "torch.cuda.manual_seed", "torch.cuda.manual_seed_all") and not guarded:
                found.append(f"{path}:{node.lineno}")
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return found


def test_s4_no_global_reseeding(tiny, tmp_path):
    """S4: "reseeding the global RNG each round".

    Client rounds (with dropout) leave torch's, numpy's and Python's global generators exactly as they were,
    and give the same updates whatever state those are in; no source file reseeds a global generator outside
    a forked (restored) one."""
    state = tiny_state(tiny, tmp_path, "peft.dropout=0.2")
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    first = state.runtime.train_round(1, [0, 1], state.global_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), numpy_state, strict=True))
    assert random.getstate() == python_state
    disturb_global_rngs(11)
    again = state.runtime.train_round(1, [0, 1], state.global_state)
    assert all(same_states(a.state, b.state) for a, b in zip(first, again, strict=True))
    sources = sorted((REPO / "src" / "fedpeft").rglob("*.py"))
    seeding = [path for path in sources if re.search(r"seed(_all)?\(", path.read_text(encoding="utf-8"))]
    assert REPO / "src" / "fedpeft" / "seeding.py" in seeding  # the scan sees the one sanctioned reseeding
    assert [hit for path in seeding for hit in _unguarded_reseeding(path)] == []


def test_s4_chat_ui_never_opens_a_public_share_link(monkeypatch):
    """S4: "UI opens a public share link".

    ``launch_ui`` asks gradio for share=False, and if a share link opens anyway (gradio reads GRADIO_SHARE) it
    closes the UI and refuses. The same against real gradio, with a trained run, is
    tests/integration/test_chat_ui.py::test_share_stays_off_even_when_gradio_share_is_set."""
    from fedpeft.serving import chat
    from fedpeft.serving.adapters import ServingError

    class FakeBlocks:
        def __init__(self, opens_link_anyway: bool):
            self.opens_link_anyway = opens_link_anyway
            self.share, self.share_url, self.closed, self.kwargs = False, None, False, {}

        def launch(self, **kwargs):
            self.kwargs = kwargs
            if kwargs.get("share") or self.opens_link_anyway:
                self.share, self.share_url = True, "https://0123.gradio.live"

        def close(self):
            self.closed = True

    local = FakeBlocks(opens_link_anyway=False)
    monkeypatch.setattr(chat, "make_ui", lambda run, defaults=None: local)
    ui = chat.launch_ui(None, "127.0.0.1", 7860, block=False, quiet=True)
    assert local.kwargs["share"] is False and ui.share is False and ui.share_url is None
    leaky = FakeBlocks(opens_link_anyway=True)
    monkeypatch.setattr(chat, "make_ui", lambda run, defaults=None: leaky)
    with pytest.raises(ServingError, match="share link"):
        chat.launch_ui(None, "127.0.0.1", 7860, block=False, quiet=True)
    assert leaky.closed


# --- across all five -------------------------------------------------------------------------------------


def test_all_strategies_share_one_aggregation_api():
    """Across all five: "One aggregation API covers them all: a per-client weight matrix W (FedAvg = identical
    rows)".

    Every registered strategy is entered the same way (``aggregate`` for one next state, ``mixing_weights`` for
    personalised ones, neither redefined per strategy), and FedAvg is the mixing matrix with identical rows:
    trust with naive weights gives every client FedAvg's aggregate."""
    gen = torch.Generator().manual_seed(9)
    states = [{"x": torch.randn(3, 4, generator=gen, dtype=torch.float64)} for _ in range(3)]
    updates = [ClientUpdate(i, s, 5, 1, 0.0, 0.0) for i, s in enumerate(states)]
    for name, cls in STRATEGIES.items():
        strategy = build_strategy(name)
        assert isinstance(strategy, Strategy) and strategy.kind in ("global", "personalised", "pooled"), name
        assert cls.aggregate is Strategy.aggregate, name
    fedavg = build_strategy("fedavg").aggregate(states[0], updates, 1)
    assert isinstance(fedavg, Aggregate)
    naive = build_strategy("trust", {"weights": "naive"})
    assert isinstance(naive.mixing_weights(updates, 1), Mixing)
    mixed, weights, _ = aggregate_personalised_round(naive, "separate", updates, 1)
    assert torch.equal(weights, weights[:1].expand_as(weights))  # identical rows
    for state in mixed:
        torch.testing.assert_close(state["x"], fedavg["x"])
