"""Stacked LoRA aggregation and clients of different ranks through the real entry point on the micro model:
the final adapter against peft's own loading and merging, exact resume, and what is refused."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from fedpeft.config import ConfigError
from fedpeft.experiment import fit as run_module
from fedpeft.experiment.resume import restore as _restore
from fedpeft.experiment.run import RunInterrupted, run_experiment, setup
from fedpeft.fl.client_round import train_client_round
from fedpeft.models.peft_methods import lora_layers, lora_scaling, scaled_lora
from fedpeft.reporting.checkpoint import list_checkpoints, load_checkpoint
from fedpeft.seeding import numpy_rng
from fedpeft.tensors.batching import collate_causal_lm

STACK = ("fl.lora_aggregation=stack", "peft.r=4", "peft.client_ranks=[2,4]")


def logits(model, examples, pad_id):
    batch = collate_causal_lm(examples, pad_id, mask_prompt=True)
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_stacked_run_saves_one_adapter_that_peft_loads_and_merges_into_the_runs_model(micro_config, tmp_path):
    config = micro_config(*STACK)
    run_dir, summary = run_experiment(config, quiet=True)
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    # Two rounds of two clients at ranks 2 and 4: total rank 12, scaling kept at alpha / r of the run.
    assert adapter_config["r"] == 12
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["stacked_rank"] for r in records if r["type"] == "round" and r["round"] > 0] == [6, 6]

    # The run's model: the base with both rounds merged (restored from the checkpoint) and a fresh adapter.
    run_state = setup(config, run_dir)
    _restore(run_state)
    assert adapter_config["lora_alpha"] / adapter_config["r"] == pytest.approx(lora_scaling(run_state.model))
    examples = run_state.data.test[:4]
    pad = run_state.tokenizer.pad_token_id
    expected = logits(run_state.model, examples, pad)

    # peft's own loading on a fresh base gives the same model ...
    fresh = setup(config, tmp_path)
    base = fresh.model.unload()
    loaded = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    torch.testing.assert_close(logits(loaded, examples, pad), expected, rtol=1e-4, atol=1e-4)
    # ... and peft's own merge gives the run's merged base weights.
    merged = loaded.merge_and_unload()
    ours = {name.removeprefix("base_model.model."): m for name, m in lora_layers(run_state.model).items()}
    for name, layer in ours.items():
        torch.testing.assert_close(
            merged.get_submodule(name).weight, layer.get_base_layer().weight, rtol=1e-5, atol=1e-6
        )


def test_interrupted_stacked_run_resumes_exactly(micro_config, monkeypatch):
    config = micro_config("fl.rounds=3", *STACK)
    full_dir, _ = run_experiment(config, quiet=True)
    original = run_module.stack_round

    def interrupt_in_round_2(*args, **kwargs):
        if args[3] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "stack_round", interrupt_in_round_2)
    with pytest.raises(RunInterrupted) as info:
        run_experiment(config, quiet=True)
    monkeypatch.setattr(run_module, "stack_round", original)
    run_experiment(resume_dir=info.value.run_dir, quiet=True)
    a = (full_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    assert a == (info.value.run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    ca, cb = (load_checkpoint(list_checkpoints(d)[-1]) for d in (full_dir, info.value.run_dir))
    assert ca.merged.keys() == cb.merged.keys() == {1, 2, 3}
    for rnd, pairs in ca.merged.items():
        assert pairs.keys() == cb.merged[rnd].keys()
        assert all(torch.equal(x, y) for k in pairs for x, y in zip(pairs[k], cb.merged[rnd][k], strict=True))


def test_a_rank_2_client_trains_only_two_components_at_its_own_scaling(micro_config, tmp_path):
    state = setup(micro_config("peft.r=8", "peft.client_ranks=[2]"), tmp_path)
    ranks = state.runtime.ranks
    view = ranks.to_client(state.global_state, 0)
    before = lora_scaling(state.model)
    with scaled_lora(state.model, ranks.scaling_factor(0)):
        assert lora_scaling(state.model) == pytest.approx(4 * before)
        trained = train_client_round(
            state.model, 0, view, state.data.clients[0].train, state.runtime.args, numpy_rng(0, "train", 1, 0)
        ).state
    assert lora_scaling(state.model) == before
    lora_a = [k for k in trained if ".lora_A." in k]
    for a_key in lora_a:
        b_key = a_key.replace(".lora_A.", ".lora_B.")
        assert not trained[a_key][2:].any() and not trained[b_key][:, 2:].any()
        assert trained[b_key][:, :2].any()  # the client's own two components did train
    # The runtime returns the update at the global scaling, the untrainable components as they were.
    (update,) = state.runtime.train_round(1, [0], state.global_state)
    for a_key in lora_a:
        assert torch.equal(update.state[a_key][2:], state.global_state[a_key][2:])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["fl.lora_aggregation=stack", "fl.strategy=fedmedian", "fl.clients=3"], "stackable: fedavg, fedprox"),
        (["fl.lora_aggregation=stack", "fl.strategy=local"], "stackable"),
        (["peft.client_ranks=[16]"], "ranks in 1..peft.r=8"),
        (["peft.client_ranks=[2,8]", "fl.strategy=scaffold"], "does not take peft.client_ranks"),
        (["peft.client_ranks=[2,8]", "fl.strategy=trust"], "does not take peft.client_ranks"),
        (["peft.client_ranks=[2,8]", "fl.strategy=centralised"], "Compare it at one rank"),
    ],
)
def test_refused_combinations_fail_before_any_run_directory(micro_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(micro_config(*overrides), quiet=True)
    assert not (tmp_path / "runs").exists()


def test_a_stacking_client_downloads_every_round_merged_since_it_last_trained(micro_config):
    run_dir, _ = run_experiment(micro_config("fl.rounds=4", "fl.clients=4", "fl.fraction=0.5", *STACK), quiet=True)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sampled = {r["round"]: r["clients"] for r in records if r["type"] == "round" and r["round"] > 0}
    merged = load_checkpoint(list_checkpoints(run_dir)[-1]).merged
    round_bytes = {q: sum(t.numel() * t.element_size() for ba in merged[q].values() for t in ba) for q in sampled}
    adapter_bytes = {}  # a client's own adapter at its rank (2 or 4 of 4 components), from its round-1 download
    for r in (x for x in records if x["type"] == "client"):
        earlier = [q for q in sampled if q < r["round"] and r["client"] in sampled[q]]
        since = max(earlier) if earlier else 1
        stacks = sum(round_bytes[q] for q in range(since, r["round"]))
        if r["round"] == 1:
            adapter_bytes[r["client"]] = r["bytes_down"]
        own = adapter_bytes.setdefault(r["client"], r["bytes_up"])
        assert r["bytes_down"] == own + stacks, r
