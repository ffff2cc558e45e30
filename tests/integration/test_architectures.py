"""Other architectures from a local model directory: GPT-2 (causal LM and classification), BERT
(classification), RoBERTa (pair classification) and T5 (seq2seq generation and classification), tiny and random, sharing the built-in
tokenizer. Target modules are resolved automatically ('auto')."""

from __future__ import annotations

import pytest
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

from fedpeft.experiment.run import run_experiment
from fedpeft.models.builtin import build_builtin
from tests.integration.test_run import FEW_MODULES


def save_tiny(tmp_path, kind: str) -> str:
    tokenizer = AutoTokenizer.from_pretrained(build_builtin("builtin:micro"))
    common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
    if kind == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=1024, bos_token_id=1, eos_token_id=2, **common)
        )
    elif kind == "t5":
        model = T5ForConditionalGeneration(
            T5Config(
                d_model=32,
                d_kv=16,
                d_ff=64,
                num_layers=1,
                num_heads=2,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.pad_token_id,
                **common,
            )
        )
    elif kind == "roberta":
        model = RobertaForSequenceClassification(
            RobertaConfig(
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=1026,
                **common,
            )
        )
    else:
        model = BertForSequenceClassification(
            BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, **common)
        )
    out = tmp_path / kind
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.mark.parametrize(
    ("kind", "task", "metric"),
    [
        ("gpt2", "instruction", "token_accuracy"),
        ("gpt2", "defect", "f1"),
        ("bert", "defect", "f1"),
        ("roberta", "clone", "f1"),
        ("t5", "code_to_text", "bleu"),
        ("t5", "defect", "f1"),
    ],
)
def test_task_heads_on_other_architectures(micro_config, tmp_path, kind, task, metric):
    config = micro_config(
        f"model.name={save_tiny(tmp_path, kind)}",
        f"data.task={task}",
        "peft.target_modules=auto",
        "data.max_length=384",
        "data.test_size=8",
        "fl.rounds=1",
        FEW_MODULES,
    )
    run_dir, summary = run_experiment(config, quiet=True)
    assert metric in summary["final_eval"] and summary["trainable_parameters"] > 0
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_t5_trains_as_seq2seq_and_its_adapter_reloads_in_peft(micro_config, tmp_path):
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from fedpeft.evaluation.metrics import evaluate_causal_lm
    from fedpeft.experiment.run import setup
    from fedpeft.models.state import set_trainable_state
    from fedpeft.reporting.checkpoint import list_checkpoints, load_checkpoint
    from fedpeft.tensors.batching import collate_seq2seq

    model_dir = save_tiny(tmp_path, "t5")
    config = micro_config(
        f"model.name={model_dir}", "peft.target_modules=auto", "fl.rounds=1", "train.lr=0.01", "train.max_steps=15"
    )
    state = setup(config, tmp_path / "probe")
    assert state.runtime.args.head == "seq2seq_lm"
    rows = state.data.clients[0].train[:16]
    pad = state.tokenizer.pad_token_id
    before = evaluate_causal_lm(state.model, rows, 16, pad, head="seq2seq_lm")["loss"]
    set_trainable_state(state.model, state.runtime.train_round(1, [0], state.global_state)[0].state)
    assert evaluate_causal_lm(state.model, rows, 16, pad, head="seq2seq_lm")["loss"] < before

    run_dir, summary = run_experiment(config, quiet=True)
    assert summary["status"] == "completed"
    state = setup(config, run_dir)
    set_trainable_state(state.model, load_checkpoint(list_checkpoints(run_dir)[-1]).global_state)
    source = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    loaded = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(source), run_dir / "adapter").eval()
    batch = collate_seq2seq(state.data.test[:4], pad)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, state.model(**batch).logits)


def test_encoder_decoder_refuses_tasks_without_a_prompt_or_an_embedding(micro_config, tmp_path):
    from fedpeft.config.recipes import ConfigError
    from fedpeft.models.base import ModelLoadError

    model_dir = save_tiny(tmp_path, "t5")
    with pytest.raises(ConfigError, match="data.task=completion has no prompt"):
        run_experiment(micro_config(f"model.name={model_dir}", "data.task=completion"), quiet=True)
    with pytest.raises(ModelLoadError, match="embedding \\(code search\\) head needs"):
        run_experiment(micro_config(f"model.name={model_dir}", "data.task=code_search"), quiet=True)
