"""One definition of the compressible tensors and one pattern resolver."""

import pytest
import torch
import torch.nn as nn

from nnshrink.errors import ConfigError
from nnshrink.quantize.binary import BinaryLinear
from nnshrink.select import (DEFAULT_BITS, DEFAULT_INDEX_BITS, KINDS, Target, compressible, get_param,
                             match, owner, resolve)


class Zoo(nn.Module):
    """One of every kind, plus things that must never be compressible."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.pos = nn.Parameter(torch.zeros(4, 8))  # >= 2-D, only by explicit name
        self.conv1 = nn.Conv1d(8, 8, 3)
        self.conv3 = nn.Conv3d(2, 2, 1)
        self.up = nn.ConvTranspose2d(2, 2, 2)
        self.bn = nn.BatchNorm1d(8)
        self.ln = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2)
        self.kv = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
        self.bin = BinaryLinear(8, 8)
        self.head = nn.Linear(8, 3)


def test_every_kind_in_model_order():
    t = compressible(Zoo())
    assert list(t) == ["emb.weight", "conv1.weight", "conv3.weight", "up.weight", "attn.in_proj_weight",
                       "attn.out_proj.weight", "kv.q_proj_weight", "kv.k_proj_weight", "kv.v_proj_weight",
                       "kv.out_proj.weight", "head.weight"]
    assert t["emb.weight"] == Target("emb.weight", "emb", "weight", "embedding", (20, 8))
    assert t["attn.in_proj_weight"].kind == "attention"
    assert t["attn.in_proj_weight"].param_name == "in_proj_weight"
    assert t["attn.out_proj.weight"].kind == "fc"
    assert t["up.weight"].kind == "conv"
    assert set(DEFAULT_BITS) == set(DEFAULT_INDEX_BITS) == set(KINDS)


def test_include_adds_explicit_params_and_narrows():
    m = Zoo()
    t = compressible(m, include=["pos", "head"])
    assert list(t) == ["pos", "head.weight"]
    assert t["pos"].kind == "param" and t["pos"].module_name == ""
    assert get_param(m, t["pos"]) is m.pos and owner(m, t["pos"]) is m
    assert list(compressible(m, include="attention")) == ["attn.in_proj_weight", "kv.q_proj_weight",
                                                          "kv.k_proj_weight", "kv.v_proj_weight"]
    # a wildcard still never picks up norms, biases or binary layers
    names = compressible(m, include="*")
    assert "pos" in names and not any(k.startswith(("bn", "ln", "bin")) or "bias" in k for k in names)


def test_exclude_and_errors_name_the_bad_value():
    m = Zoo()
    assert "head.weight" not in compressible(m, exclude=["head"])
    with pytest.raises(ConfigError, match="'nope'.*tensors are: emb.weight"):
        compressible(m, include=["nope"])
    with pytest.raises(ConfigError, match="exclude pattern 'zzz'"):
        compressible(m, exclude="zzz")
    with pytest.raises(ConfigError, match="LayerNormOnly"):
        compressible(type("LayerNormOnly", (nn.Module,), {})())
    with pytest.raises(ConfigError, match="BatchNorm1d"):
        compressible(nn.BatchNorm1d(3))


def test_resolve_first_match_kind_module_and_default():
    t = compressible(Zoo())
    got = resolve({"head": 3, "fc": 4, "attn.*": 6, "conv": 7}, t, lambda x: DEFAULT_BITS[x.kind], what="bits")
    assert got["head.weight"] == 3  # module name, listed before "fc"
    assert got["attn.out_proj.weight"] == 4  # the kind "fc" comes before "attn.*"
    assert got["attn.in_proj_weight"] == 6  # full-name glob
    assert got["conv3.weight"] == 7
    assert got["emb.weight"] == DEFAULT_BITS["embedding"]
    assert resolve(None, t, 0.5, what="sparsity") == {n: 0.5 for n in t}
    with pytest.raises(ConfigError, match="bits pattern 'fc9' matches no compressible tensor; tensors are: "):
        resolve({"fc9": 1}, t, 5, what="bits")
    with pytest.raises(ConfigError, match="must map"):
        resolve(["head"], t, 5, what="bits")


def test_match_each_pattern_must_hit():
    t = compressible(Zoo())
    assert match(["head", "emb*"], t, what="layer") == ["emb.weight", "head.weight"]
    with pytest.raises(ConfigError, match="layer pattern 'x'"):
        match(["head", "x"], t, what="layer")
    with pytest.raises(ConfigError, match="non-empty"):
        match([""], t, what="layer")
