"""The real entry points on a micro model: files written, adapter loadable by peft, resume exact."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from fedpeft.cli import app
from fedpeft.config import ConfigError
from fedpeft.data.partition import PartitionError
from fedpeft.experiment.run import RunInterrupted, run_experiment, setup
from fedpeft.fl.strategies.fedavg import FedAvg
from fedpeft.models.state import set_trainable_state
from fedpeft.reporting.checkpoint import list_checkpoints, load_checkpoint
from fedpeft.tensors.batching import collate_causal_lm
from tests.integration.conftest import MICRO, assert_updates_agree

# Tasks that rewrite every function's AST are built from a few modules to keep the tests quick.
FEW_MODULES = "data.modules=[email, logging, argparse, http, json, csv, collections, asyncio, urllib]"


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_run_two_clients_two_rounds_writes_the_run_directory(tmp_path):
    out = tmp_path / "runs"
    args = ["run", "default", "--quiet", "--set", f"output.dir={out}"]
    for item in MICRO:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    assert run_dir.name.startswith("default-")
    for name in ["config.yaml", "metrics.jsonl", "summary.json", "partition.json", "partition.png", "loss.png"]:
        assert (run_dir / name).is_file(), name
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["fl"]["clients"] == 2

    records = read_jsonl(run_dir / "metrics.jsonl")
    rounds = [r for r in records if r["type"] == "round"]
    clients = [r for r in records if r["type"] == "client"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert len(clients) == 4 and all(c["steps"] == 3 for c in clients)
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    adapter_bytes = sum(t.numel() * t.element_size() for t in adapter.values())
    assert all(c["bytes_up"] == adapter_bytes == c["bytes_down"] for c in clients)
    assert rounds[1]["bytes_up"] == 2 * adapter_bytes
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == 2
    assert summary["final_eval"]["loss"] < summary["initial_eval"]["loss"]
    assert [p.name for p in list_checkpoints(run_dir)] == ["round-0001", "round-0002"]


def test_saved_adapter_loads_in_peft_with_identical_logits(micro_config):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir, _ = run_experiment(micro_config(), quiet=True)
    ckpt = load_checkpoint(list_checkpoints(run_dir)[-1])
    state = setup(micro_config(), run_dir)
    set_trainable_state(state.model, ckpt.global_state)
    config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    loaded = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    batch = collate_causal_lm(state.data.test[:4], state.tokenizer.pad_token_id, mask_prompt=True)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        expected = state.model(**inputs).logits
        got = loaded(**inputs).logits
    assert torch.equal(got, expected)
    # The adapter is not a no-op: it moved the logits away from the base model's.
    with torch.no_grad(), loaded.disable_adapter():
        assert not torch.allclose(loaded(**inputs).logits, got)


def test_resume_after_interrupt_gives_the_same_final_adapter(micro_config, monkeypatch):
    config = micro_config("fl.rounds=3", "fl.clients=3", "fl.fraction=0.67", "peft.dropout=0.1")
    full_dir, _ = run_experiment(config, quiet=True)

    original = FedAvg.aggregate

    def interrupt_in_round_2(self, global_state, updates, server_round, context=None):
        if server_round == 2:
            raise KeyboardInterrupt
        return original(self, global_state, updates, server_round, context=context)

    monkeypatch.setattr(FedAvg, "aggregate", interrupt_in_round_2)
    with pytest.raises(RunInterrupted, match="--resume") as info:
        run_experiment(config, quiet=True)
    cut_dir = info.value.run_dir
    assert info.value.last_round == 1
    assert json.loads((cut_dir / "summary.json").read_text())["status"] == "interrupted"
    assert not (cut_dir / "adapter").exists()
    monkeypatch.setattr(FedAvg, "aggregate", original)

    resumed_dir, summary = run_experiment(resume_dir=cut_dir, quiet=True)
    assert resumed_dir == cut_dir and summary["status"] == "completed"
    a = load_file(str(full_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(cut_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The log reads as if the run had never stopped: each round once, same clients, same losses.
    rounds_full = [r for r in read_jsonl(full_dir / "metrics.jsonl") if r["type"] == "round"]
    rounds_cut = [r for r in read_jsonl(cut_dir / "metrics.jsonl") if r["type"] == "round"]
    assert [r["round"] for r in rounds_cut] == [0, 1, 2, 3]
    assert [r["clients"] for r in rounds_cut[1:]] == [r["clients"] for r in rounds_full[1:]]
    assert [r["eval"]["loss"] for r in rounds_cut] == [r["eval"]["loss"] for r in rounds_full]


def test_resume_can_extend_rounds_but_not_change_other_keys(micro_config):
    run_dir, _ = run_experiment(micro_config("fl.rounds=1"), quiet=True)
    with pytest.raises(ConfigError, match="only fl.rounds may be set"):
        run_experiment(resume_dir=run_dir, overrides=["train.lr=1"], quiet=True)
    _, summary = run_experiment(resume_dir=run_dir, overrides=["fl.rounds=2"], quiet=True)
    assert summary["rounds_completed"] == 2


def test_frozen_base_is_bit_identical_after_training(micro_config, tmp_path):
    state = setup(micro_config(), tmp_path)
    frozen = {n: p.detach().clone() for n, p in state.model.named_parameters() if not p.requires_grad}
    updates = state.runtime.train_round(1, [0, 1], state.global_state)
    assert any(not torch.equal(u.state[k], state.global_state[k]) for u in updates for k in u.state)
    for n, p in state.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), n


def test_gradient_accumulation_does_not_change_the_update(micro_config, tmp_path):
    whole = setup(micro_config("peft.dropout=0", "train.batch_size=4", "train.micro_batch_size=4"), tmp_path)
    split = setup(micro_config("peft.dropout=0", "train.batch_size=4", "train.micro_batch_size=1"), tmp_path)
    a = whole.runtime.train_round(1, [0], whole.global_state)[0]
    b = split.runtime.train_round(1, [0], split.global_state)[0]
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
    # A wrong normalisation (per-micro-batch means) moves whole tensors; summation order moves a few elements.
    assert_updates_agree(a.state, b.state, lr=whole.runtime.args.lr, steps=a.num_steps)


def test_bad_input_fails_before_training(micro_config, tmp_path):
    with pytest.raises(
        PartitionError, match=r"fl.clients=500 is more than the \d+ training rows .*; use at most \d+ clients"
    ):
        run_experiment(micro_config("fl.clients=500"), quiet=True)
    with pytest.raises(ConfigError, match="unknown fl.strategy 'fedmagic'; valid strategies: .*fedavg, fedavgm"):
        run_experiment(micro_config("fl.strategy=fedmagic"), quiet=True)
    assert not (tmp_path / "runs").exists()  # no run directory is left behind by bad input


def test_cli_reports_errors_without_a_traceback(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["run", "nope"])
    assert result.exit_code == 2 and "unknown recipe 'nope'; valid recipes: default, modules" in result.output
    result = runner.invoke(app, ["run", "--set", "fl.fraction=2"])
    assert result.exit_code == 2 and "fl.fraction: must be in (0, 1]" in result.output
    result = runner.invoke(app, ["run", "--resume", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such run directory" in result.output
    result = runner.invoke(app, ["recipes"])
    assert result.exit_code == 0 and any(line.split()[:1] == ["default"] for line in result.output.splitlines())


def test_cli_config_prints_the_resolved_recipe():
    result = CliRunner().invoke(app, ["config", "default", "--set", "fl.rounds=7"])
    assert result.exit_code == 0
    assert yaml.safe_load(result.output)["fl"]["rounds"] == 7
    result = CliRunner().invoke(app, ["config", "--set", "peft.r=0"])
    assert result.exit_code == 2 and "peft.r: must be a positive integer" in result.output


def test_test_split_comes_only_from_corpus_test_functions(micro_config, tmp_path):
    from fedpeft.data.federated import load_rows
    from fedpeft.data.text_tasks import tokenize_rows

    state = setup(micro_config(), tmp_path)
    rows = load_rows("stdlib", None)
    test_ids = {e.input_ids for e in tokenize_rows([r for r in rows if r.split == "test"], state.tokenizer, 256)[0]}
    assert state.data.test and all(e.input_ids in test_ids for e in state.data.test)
    assert not any(e.input_ids in test_ids for c in state.data.clients for e in c.train + c.val)


def test_cli_partition_prints_the_table_and_writes_the_heatmap(tmp_path):
    png = tmp_path / "p.png"
    args = ["partition", "default", "--png", str(png)]
    for item in [*MICRO, "data.partition=dirichlet", "data.dirichlet_alpha=0.2", "fl.clients=3"]:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "dirichlet partition: 3 clients" in result.output and "client-2" in result.output
    assert png.stat().st_size > 1000
    result = CliRunner().invoke(
        app, ["partition", "--set", "data.min_client_size=500", *sum((["--set", m] for m in MICRO), [])]
    )
    assert result.exit_code == 2 and "below data.min_client_size=500" in result.output


def test_completion_task_runs_and_ignores_special_tokens(micro_config):
    run_dir, summary = run_experiment(micro_config("data.task=completion"), quiet=True)
    rounds = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["type"] == "round"]
    assert summary["final_eval"]["loss"] < summary["initial_eval"]["loss"]
    # Completion does not score special tokens (the EOS of rows short enough to keep it).
    state = setup(micro_config("data.task=completion"), run_dir)
    special = set(state.tokenizer.all_special_ids)
    targets = [t for e in state.data.test for t in e.input_ids[e.prompt_len :]]
    n_special = sum(t in special for t in targets)
    assert n_special > 0
    assert rounds[0]["eval"]["tokens"] == len(targets) - n_special


def test_interrupt_while_checkpointing_keeps_log_and_summary_at_the_last_checkpoint(micro_config, monkeypatch):
    from fedpeft.experiment import fit as run_module

    real_save = run_module.save_checkpoint

    def interrupt_saving_round_2(run_dir, ckpt, keep):
        if ckpt.round == 2:
            raise KeyboardInterrupt  # round 2's records are already in the log
        return real_save(run_dir, ckpt, keep)

    monkeypatch.setattr(run_module, "save_checkpoint", interrupt_saving_round_2)
    with pytest.raises(RunInterrupted) as info:
        run_experiment(micro_config("fl.rounds=3"), quiet=True)
    run_dir = info.value.run_dir
    assert info.value.last_round == 1
    assert max(r["round"] for r in read_jsonl(run_dir / "metrics.jsonl")) == 1
    assert json.loads((run_dir / "summary.json").read_text())["rounds_completed"] == 1


def test_code_to_text_scores_greedy_generations_with_bleu(micro_config):
    config = micro_config("data.task=code_to_text", "fl.rounds=1", "eval.max_new_tokens=8", "eval.clients=false")
    run_dir, summary = run_experiment(config, quiet=True)
    final = summary["final_eval"]
    assert final["generated"] == 12 and 0.0 <= final["bleu"] <= 100.0
    # Greedy decoding is deterministic: evaluating the same adapter again gives the same score.
    state = setup(config, run_dir)
    set_trainable_state(state.model, load_checkpoint(list_checkpoints(run_dir)[-1]).global_state)
    from fedpeft.evaluation.metrics import evaluate_generation

    again = evaluate_generation(state.model, state.tokenizer, state.data.test, 8)
    assert again["bleu"] == final["bleu"]


def test_defect_classifier_adapter_carries_its_head_and_reloads_in_peft(micro_config):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from fedpeft.tensors.batching import collate_classification

    config = micro_config("data.task=defect", "data.max_length=384", "data.test_size=8", "fl.rounds=1", FEW_MODULES)
    run_dir, summary = run_experiment(config, quiet=True)
    assert {"accuracy", "f1", "mcc", "loss"} <= summary["final_eval"].keys()
    adapter = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert any(k.endswith("score.weight") for k in adapter)

    state = setup(config, run_dir)
    set_trainable_state(state.model, load_checkpoint(list_checkpoints(run_dir)[-1]).global_state)
    source = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, pad_token_id=state.tokenizer.pad_token_id
    )
    loaded = PeftModel.from_pretrained(base, run_dir / "adapter").eval()
    batch = collate_classification(state.data.test[:4], state.tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, state.model(**inputs).logits)


@pytest.mark.parametrize(
    ("fixture", "schema", "task", "metric"),
    [
        ("cola.csv", "cola", "text_classification", "mcc"),
        ("dolly.jsonl", "dolly", "instruction", "token_accuracy"),
        ("codexglue_clone.jsonl", "codexglue-clone", "clone", "f1"),
        ("codexglue_search_adv.jsonl", "codexglue-search", "code_search", "mrr"),
    ],
)
def test_runs_on_a_local_file_in_a_published_schema(micro_config, fixture, schema, task, metric):
    from pathlib import Path

    path = Path(__file__).parent.parent / "fixtures" / fixture
    config = micro_config(
        f"data.source={path}", f"data.schema={schema}", f"data.task={task}", "data.test_size=4", "fl.rounds=1"
    )
    run_dir, summary = run_experiment(config, quiet=True)
    assert summary["status"] == "completed" and metric in summary["final_eval"]
    assert json.loads((run_dir / "partition.json").read_text())["test_rows"] == 4


def test_clone_threshold_is_chosen_on_validation_not_test(micro_config):
    from fedpeft.evaluation.metrics import best_f1_threshold, classifier_outputs

    config = micro_config("data.task=clone", "data.max_length=768", "data.test_size=8", "fl.rounds=1", FEW_MODULES)
    run_dir, summary = run_experiment(config, quiet=True)
    state = setup(config, run_dir)
    set_trainable_state(state.model, load_checkpoint(list_checkpoints(run_dir)[-1]).global_state)
    val = [e for c in state.data.clients for e in c.val]
    _, labels, probs = classifier_outputs(state.model, val, 16, state.tokenizer.pad_token_id)
    assert summary["final_eval"]["threshold"] == pytest.approx(best_f1_threshold(labels, probs[:, 1]))


def test_resume_refuses_fewer_rounds_than_done_and_bad_targets_are_config_errors(micro_config):
    run_dir, _ = run_experiment(micro_config("fl.rounds=2"), quiet=True)
    with pytest.raises(ConfigError, match="fl.rounds=1 is below the 2 rounds"):
        run_experiment(resume_dir=run_dir, overrides=["fl.rounds=1"], quiet=True)
    with pytest.raises(ConfigError, match=r"peft.target_modules \['nope'\] not found"):
        run_experiment(micro_config("peft.target_modules=[nope]"), quiet=True)
    with pytest.raises(ConfigError, match="data.val_fraction > 0"):
        run_experiment(
            micro_config(
                "data.task=clone", "data.val_fraction=0", "data.max_length=768", "data.test_size=8", FEW_MODULES
            ),
            quiet=True,
        )


def test_code_to_text_references_are_the_full_docstring_sentence(micro_config, tmp_path):
    state = setup(micro_config("data.task=code_to_text", "data.max_length=160"), tmp_path)
    decoded = [state.tokenizer.decode(e.input_ids[e.prompt_len :], skip_special_tokens=True) for e in state.data.test]
    assert all(e.reference for e in state.data.test)
    assert any(len(e.reference) > len(d.strip()) for e, d in zip(state.data.test, decoded, strict=True))


def test_code_search_trains_embeddings_scored_by_mrr_and_reloads_in_peft(micro_config):
    from peft import PeftModel
    from transformers import AutoModel

    from fedpeft.tensors.batching import collate_query_code, mean_pool

    config = micro_config("data.task=code_search", "fl.rounds=2", "train.max_steps=5", "eval.retrieval_candidates=300")
    run_dir, summary = run_experiment(config, quiet=True)
    final = summary["final_eval"]
    assert final["candidates"] == 300 and 0 < final["mrr"] <= 1
    # Distractors are codes no client trains on and no query owns.
    data = setup(config, run_dir).data
    trained = {e.input_ids[e.prompt_len :] for c in data.clients for e in c.train + c.val}
    queries = {e.input_ids[e.prompt_len :] for e in data.test}
    distractors = {e.input_ids[e.prompt_len :] for e in data.distractors}
    assert len(distractors) == 288 and not distractors & (trained | queries)
    # The contrastive objective is learned: a client fits its own rows.
    from fedpeft.evaluation.metrics import evaluate_retrieval

    fitting = setup(micro_config("data.task=code_search", "train.max_steps=20", "train.lr=0.003"), run_dir)
    rows = fitting.data.clients[0].train[:16]
    before = evaluate_retrieval(fitting.model, rows, 16, fitting.tokenizer.pad_token_id, 0.05)["loss"]
    set_trainable_state(fitting.model, fitting.runtime.train_round(1, [0], fitting.global_state)[0].state)
    assert evaluate_retrieval(fitting.model, rows, 16, fitting.tokenizer.pad_token_id, 0.05)["loss"] < before
    state = setup(config, run_dir)
    set_trainable_state(state.model, load_checkpoint(list_checkpoints(run_dir)[-1]).global_state)
    source = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    loaded = PeftModel.from_pretrained(AutoModel.from_pretrained(source), run_dir / "adapter").eval()
    batch = collate_query_code(state.data.test[:4], state.tokenizer.pad_token_id)
    with torch.no_grad():
        ours = mean_pool(
            state.model(input_ids=batch["code_ids"], attention_mask=batch["code_mask"]).last_hidden_state,
            batch["code_mask"],
        )
        theirs = mean_pool(
            loaded(input_ids=batch["code_ids"], attention_mask=batch["code_mask"]).last_hidden_state, batch["code_mask"]
        )
    assert torch.equal(ours, theirs)
