"""Other architectures from a local model directory: GPT-2 (causal LM and classification) and BERT
(classification), tiny and random, sharing the built-in tokenizer. Target modules are resolved
automatically ('auto')."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

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
    [("gpt2", "instruction", "token_accuracy"), ("gpt2", "defect", "f1"), ("bert", "defect", "f1")],
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
