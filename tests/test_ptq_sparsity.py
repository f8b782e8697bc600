"""Per-layer sparsity under one overall fraction (nnshrink/ptq/sparsity.py): the layer whose
errors matter least is pruned most, the overall fraction holds, and the output error is
lower than with one fraction everywhere."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nnshrink
from nnshrink import PostTraining
from nnshrink.errors import ConfigError
from nnshrink.ptq.compress import compress_model
from nnshrink.ptq.sparsity import candidate_fractions


class Net(nn.Module):
    """Two branches into one head; the second branch reaches the output damped 50x."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(32, 64), nn.Linear(32, 64), nn.Linear(64, 8)

    def forward(self, x):
        return self.head(F.gelu(self.a(x)) + 0.02 * F.gelu(self.b(x)))


def net():
    torch.manual_seed(0)
    return Net().eval()


def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(64, 32, generator=g) for _ in range(4)]


def rel_error(m, res, xs):
    ref = m.state_dict()
    dense = {n: torch.as_tensor(t.to_dense()) for n, t in res.tensors.items()}
    with torch.no_grad():
        want = [m(x) for x in xs]
        m.load_state_dict(dense)
        got = [m(x) for x in xs]
        m.load_state_dict(ref)
    return float(np.mean([float(((g - w) ** 2).sum() / (w ** 2).sum()) for g, w in zip(got, want)]))


def test_the_least_sensitive_layer_is_pruned_most_and_the_error_falls():
    m, xs = net(), batches()
    uniform = compress_model(m, xs, bits=8, sparsity=0.5, min_numel=256)
    by_layer = compress_model(m, xs, bits=8, sparsity=0.5, min_numel=256, sparsity_by_layer=True)
    frac = {r["name"]: r["sparsity"] for r in by_layer.rows}
    assert frac["b.weight"] > frac["a.weight"] + 0.1, frac
    numel = {"a.weight": 2048, "b.weight": 2048, "head.weight": 512}
    overall = sum(frac[n] * k for n, k in numel.items()) / sum(numel.values())
    assert 0.5 <= overall <= 0.55, overall  # candidates are 10% apart: the allocator may overshoot a little
    assert all(r["sparsity"] == pytest.approx(0.5, abs=0.01) for r in uniform.rows)
    assert rel_error(m, by_layer, xs) < 0.8 * rel_error(m, uniform, xs)
    assert by_layer.metadata["info"]["post_training"]["sparsity_by_layer"] is True


def test_probed_by_layer_sparsity_keeps_the_overall_fraction():
    m, xs = net(), batches()
    res = compress_model(m, xs, bits=8, sparsity=0.4, min_numel=256, sparsity_by_layer=True, probe=True)
    assert res.metadata["info"]["post_training"]["probed"]
    kept = sum(int(t.mask.sum()) for n, t in res.tensors.items() if n.endswith("weight"))
    assert kept <= 0.6 * (2048 + 2048 + 512)


def test_candidate_fractions_stay_in_range():
    assert candidate_fractions(0.5) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert candidate_fractions(0.1) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert candidate_fractions(0.9) == [0.6, 0.7, 0.8, 0.9]


def test_the_api_takes_it():
    m, xs = net(), batches()
    res = nnshrink.compress(m, PostTraining(bits=8, sparsity=0.5, sparsity_by_layer=True, min_numel=256), calibrate=xs)
    assert res.report["recipe"]["sparsity_by_layer"] is True
    assert len({round(r["sparsity"], 2) for r in res.report["layers"] if "bits" in r}) > 1


@pytest.mark.parametrize("kw, words", [
    (dict(sparsity=0.0), "needs a sparsity > 0"),
    (dict(sparsity=0.5, target_bpw=4.0, bits=None), "not a budget"),
])
def test_bad_settings_are_one_line_config_errors(kw, words):
    args = {"bits": 8, "min_numel": 256, "sparsity_by_layer": True, **kw}
    with pytest.raises(ConfigError, match=words):
        compress_model(net(), batches(), **args)


def test_the_settings_refuse_what_cannot_work():
    with pytest.raises(ConfigError, match="sparsity_by_layer must be true or false; got 'yes'"):
        PostTraining(sparsity=0.5, sparsity_by_layer="yes")
    with pytest.raises(ConfigError, match="sparsity_by_layer needs sparsity > 0"):
        PostTraining(sparsity_by_layer=True)
    with pytest.raises(ConfigError, match="sparsity_by_layer needs calibration data"):
        nnshrink.compress(net(), PostTraining(bits=8, sparsity=0.5, sparsity_by_layer=True, min_numel=256))
    with pytest.raises(ConfigError, match="needs calibration data"):
        compress_model(net(), None, bits=8, sparsity=0.5, min_numel=256, sparsity_by_layer=True)
