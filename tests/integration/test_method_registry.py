"""Every registered PEFT method applied to ``builtin:micro`` (causal head) through one tester: something
trains, only the method's own tensors train (or, for a method that trains everything, every weight), and
``save`` writes a directory that loads back (peft, our bottleneck loader, or transformers) with the same
logits after training moved the tensors."""

from __future__ import annotations

import json

import pytest
import torch

from fedpeft.models.base import load_base_model
from fedpeft.models.methods import METHODS, PeftSpec, apply_peft, save_trained
from fedpeft.models.methods.config_keys import resolve_method_args
from fedpeft.seeding import torch_rng_scope

SMALL = {"num_virtual_tokens": 4, "bottleneck_size": 8}
"""Settings that keep each method tiny on the micro model."""


def fresh_base() -> torch.nn.Module:
    with torch_rng_scope(0, "init", 1):
        return load_base_model("builtin:micro").model


def reload(where, method) -> torch.nn.Module:
    if method.trains_everything:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(where)
    if json.loads((where / "adapter_config.json").read_text()).get("peft_type") == "BOTTLENECK":
        from fedpeft.models.bottleneck import load_bottleneck

        return load_bottleneck(fresh_base(), where)
    from peft import PeftModel

    return PeftModel.from_pretrained(fresh_base(), str(where))


@pytest.mark.parametrize("name", METHODS.names())
def test_a_method_trains_only_its_tensors_and_saves_a_loadable_directory(name, tmp_path):
    method = METHODS.get(name)
    args = {k: v for k, v in SMALL.items() if k in resolve_method_args(name, {})}
    settings = method.parse_args(args)
    base = fresh_base()
    base_params = {id(p) for p in base.parameters()}
    with torch_rng_scope(0, "init"):
        model = apply_peft(base, PeftSpec(name, target_modules="auto", settings=settings), "causal_lm")

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, f"{name} trains nothing"
    own = {n for n, p in trainable.items() if id(p) not in base_params}
    if method.trains_everything:
        assert not own and len(trainable) == len(base_params)
    else:
        assert own == set(trainable), f"{name} trains base weights: {sorted(set(trainable) - own)[:3]}"
        assert all(not p.requires_grad for p in model.parameters() if id(p) in base_params)

    # Move what trains (a zero-initialised adapter would reload to the base trivially), then save and reload.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainable.values():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    ids = torch.tensor([[1, 5, 9, 14, 20, 31, 2]])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    save_trained(model, tmp_path / "saved", PeftSpec(name, settings=settings))
    reloaded = reload(tmp_path / "saved", method).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
