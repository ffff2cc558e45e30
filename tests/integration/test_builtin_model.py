"""The shipped pretrained model: present, within its size budget, documented, and better than chance
on held-out stdlib functions it never saw."""

from __future__ import annotations

import json

import torch

from fedpeft.data.stdlib_corpus import corpus_split, load_stdlib_corpus
from fedpeft.experiment.pretrain import held_out_loss
from fedpeft.models.base import load_base_model
from fedpeft.models.builtin import pretrained_dir


def test_shipped_model_has_weights_card_and_provenance_within_25_mb():
    path = pretrained_dir("small")
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MB"
    card = json.loads((path / "fedpeft_builtin.json").read_text())
    assert (
        card["weights"] == "pretrained" and card["tokens_seen"] > 0 and card["command"].startswith("fedpeft pretrain")
    )
    readme = (path / "README.md").read_text()
    assert f"{card['valid_loss']:.4f}" in readme and card["command"] in readme


def test_pretrained_model_predicts_held_out_test_functions_far_better_than_uniform():
    base = load_base_model("builtin:small")
    tokenizer = base.tokenizer
    texts = [r.code for r in load_stdlib_corpus() if corpus_split(r) == "test"][:40]
    seqs = [[tokenizer.bos_token_id, *ids[:254], tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]
    with torch.no_grad():
        loss = held_out_loss(base.model, seqs, tokenizer.pad_token_id, 4096)
    uniform = torch.log(torch.tensor(float(len(tokenizer)))).item()
    assert loss < 0.6 * uniform, (loss, uniform)
