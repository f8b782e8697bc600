"""The stage registry: recipes are validated against it, a new stage is one registration,
and the built-in stages resolve their per-tensor values through select.py."""

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import nnshrink
from nnshrink.compressed import SharedTensor, SparseTensor
from nnshrink.errors import ConfigError
from nnshrink.recipes import load_recipe, recipe_from_dict
from nnshrink.select import DEFAULT_BITS
from nnshrink.stages import REGISTRY, Context, Stage, export_all
from nnshrink.stages.prune import GENERIC_SPARSITY, PruneConfig, plan
from nnshrink.stages.share import ShareConfig, bits_plan


class Mixed(nn.Module):
    """One tensor of every built-in kind."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.conv = nn.Conv1d(16, 16, 3, padding=1)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        h = self.conv(self.embed(x).transpose(1, 2)).transpose(1, 2)
        return self.fc(self.attn(h, h, h)[0].mean(1))


def test_builtin_stages_registered_with_their_configs():
    assert {"prune", "share", "binary"} <= set(REGISTRY)
    assert REGISTRY["prune"].config is PruneConfig and REGISTRY["share"].config is ShareConfig


def test_recipes_are_validated_against_the_registry():
    with pytest.raises(ConfigError, match="unknown stage 'quantize'; stages are binary, fold, prune, share, encode"):
        recipe_from_dict({"stages": ["quantize", "encode"]})
    with pytest.raises(ConfigError, match="'share' before 'prune'"):
        recipe_from_dict({"stages": ["share", "prune", "encode"]})
    with pytest.raises(ConfigError, match="'binary' runs alone"):
        recipe_from_dict({"stages": ["prune", "binary", "encode"]})
    with pytest.raises(ConfigError, match="unknown key.*'bitz'.*\\[share\\]"):
        recipe_from_dict({"stages": ["share", "encode"], "share": {"bitz": 3}})


def test_generic_defaults_per_kind_for_a_model_nnshrink_does_not_know():
    recipe = load_recipe("deep-compression")
    assert recipe.defaults.startswith("generic") and recipe.prune.sparsity is None
    model = Mixed()
    sparsity = plan(model, recipe.prune)
    kinds = {"embed.weight": "embedding", "conv.weight": "conv", "attn.in_proj_weight": "attention",
             "attn.out_proj.weight": "fc", "fc.weight": "fc"}
    assert set(sparsity) == set(kinds)
    assert all(sparsity[n] == GENERIC_SPARSITY[k] for n, k in kinds.items())
    assert bits_plan(model, recipe.share) == {n: DEFAULT_BITS[k] for n, k in kinds.items()}
    assert load_recipe("deep-compression", "lenet5").defaults == "tuned for lenet5"


def test_layer_patterns_override_and_kind_names_work():
    cfg = PruneConfig(layers={"attention": 0.5, "fc*": 0.2}, exclude=("embed",))
    got = plan(Mixed(), cfg)
    assert got["attn.in_proj_weight"] == 0.5 and got["fc.weight"] == 0.2 and got["embed.weight"] is None
    assert bits_plan(Mixed(), ShareConfig(conv_bits=3, layers={"attn.out_proj": 2}))["conv.weight"] == 3
    with pytest.raises(ConfigError, match="share.layers pattern 'lstm' matches no compressible tensor"):
        bits_plan(Mixed(), ShareConfig(layers={"lstm": 4}))


def test_retraining_without_a_trainer_is_a_note_not_an_error():
    ctx = Context()
    assert ctx.retrain(nn.Linear(2, 2), 1, "share") is False
    assert ctx.notes == ["share: retraining skipped (no fine_tune / training data given)"]


def test_a_new_stage_is_one_registration(monkeypatch):
    """A stage defined outside nnshrink runs through the same loop, ladder and archive."""

    @dataclass(frozen=True)
    class HalveConfig:
        factor: float = 0.5

    def apply(model, cfg, ctx):
        with torch.no_grad():
            model.fc.weight.mul_(cfg.factor)
        return {"scaled": "fc.weight"}

    monkeypatch.setitem(REGISTRY, "halve", Stage("halve", HalveConfig, apply, rung=lambda t: "halved", order=5))
    recipe = recipe_from_dict({"stages": ["halve", "prune", "encode"], "halve": {"factor": 0.25},
                               "prune": {"sparsity": 0.5}})
    model = Mixed()
    before = model.fc.weight.detach().clone()
    res = nnshrink.compress(model, recipe, progress=False)
    assert [r["rung"] for r in res.report["ladder"]] == ["dense", "halved", "pruned", "+Huffman"]
    assert res.report["stages"][0]["details"] == {"scaled": "fc.weight"}
    kept = res.tensors["fc.weight"]
    assert isinstance(kept, SparseTensor)
    assert torch.allclose(torch.from_numpy(kept.to_dense())[torch.from_numpy(kept.mask)],
                          (before * 0.25)[torch.from_numpy(kept.mask)])
    with pytest.raises(ConfigError, match="unknown key.*'scale'.*\\[halve\\]"):
        recipe_from_dict({"stages": ["halve", "encode"], "halve": {"scale": 2}})


def test_every_compressible_kind_is_shared_and_exported(tmp_path):
    model = Mixed()
    res = nnshrink.compress(model, "share", progress=False)
    for name in ("embed.weight", "conv.weight", "attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"):
        assert isinstance(res.tensors[name], SharedTensor), name
    assert res.tensors["attn.in_proj_weight"].bits == DEFAULT_BITS["attention"]
    assert export_all(model).keys() == res.tensors.keys()
    res.save(tmp_path / "m.nsk")
    with nnshrink.open_archive(tmp_path / "m.nsk") as a:
        assert set(a.keys()) == set(model.state_dict())

