"""Criteria: q*std threshold, per-layer target sparsity, global magnitude; bad input."""

import math
import re

import pytest
import torch
import torch.nn as nn

from nnshrink.errors import ConfigError
from nnshrink.prune import (
    GlobalMagnitude, StdThreshold, TargetSparsity, make_criterion, prune_model, resolve_criteria,
)


def net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))


def test_std_threshold_matches_reference():
    w = torch.randn(50, 40)
    m = StdThreshold(1.0)(w)
    ref = w.abs() > 1.0 * w.std()
    assert torch.equal(m, ref)
    # roughly the Gaussian fraction |z| > 1
    assert abs(float(m.float().mean()) - 0.317) < 0.05
    assert torch.equal(StdThreshold(0)(w), w != 0)


def test_target_sparsity_exact_count_and_smallest_removed():
    w = torch.randn(33, 17)
    m = TargetSparsity(0.9)(w)
    keep = round(0.1 * w.numel())
    assert int(m.sum()) == keep
    assert w.abs()[m].min() >= w.abs()[~m].max()


def test_target_sparsity_ties_are_deterministic():
    w = torch.ones(10, 10)
    m = TargetSparsity(0.5)(w)
    assert int(m.sum()) == 50 and torch.equal(m, TargetSparsity(0.5)(w.clone()))


def test_target_sparsity_never_revives():
    w = torch.randn(20, 20)
    mask = torch.rand(20, 20) > 0.8  # already sparser than requested
    new = TargetSparsity(0.5)(w, mask)
    assert torch.equal(new, mask)


def test_global_magnitude_uses_one_threshold():
    model = net()
    with torch.no_grad():
        model[2].weight.mul_(2)  # second layer larger: global keeps more of it
    orig = {i: model[i].weight.detach().clone() for i in (0, 2)}
    rows = prune_model(model, GlobalMagnitude(0.8))
    total = sum(r.params for r in rows)
    assert sum(r.nonzero for r in rows) == round(0.2 * total)
    kept_vals = torch.cat([model[i].weight.detach()[model[i].weight_mask].abs() for i in (0, 2)])
    pruned_vals = torch.cat([(model[i].weight.detach() * 0 + orig[i]).abs()[~model[i].weight_mask] for i in (0, 2)])
    thr_kept, thr_pruned = float(kept_vals.min()), float(pruned_vals.max())
    assert thr_kept >= thr_pruned
    kept = {r.name: r.kept for r in rows}
    assert kept["2.weight"] > kept["0.weight"]


def test_prune_model_overrides_and_patterns():
    model = net()
    rows = prune_model(model, TargetSparsity(0.5), overrides={"2": 0.9})
    kept = {r.name: r.kept for r in rows}
    assert kept["0.weight"] == pytest.approx(0.5)
    assert kept["2.weight"] == pytest.approx(0.1)
    model = net()
    rows = prune_model(model, 0.5, exclude=["2*"])
    assert [r.name for r in rows] == ["0.weight"]
    assert not hasattr(model[2], "weight_mask")
    model = net()
    rows = prune_model(model, "q=1", include=["0.weight"], overrides={"2": None})
    assert [r.name for r in rows] == ["0.weight"]


def test_lenet_layer_names():
    from nnshrink.models import build_model

    model = build_model("lenet5")
    plan = resolve_criteria(model, 0.5, overrides={"conv*": 0.3, "ip1": "q=2"})
    assert plan["conv1.weight"] == TargetSparsity(0.3) and plan["conv2.weight"] == TargetSparsity(0.3)
    assert plan["ip1.weight"] == StdThreshold(2.0) and plan["ip2.weight"] == TargetSparsity(0.5)


@pytest.mark.parametrize("bad", [1.0, 1.3, -0.1, float("nan")])
def test_bad_sparsity_names_value(bad):
    with pytest.raises(ConfigError, match=re.escape(str(bad)) if not math.isnan(bad) else "nan"):
        TargetSparsity(bad)
    with pytest.raises(ConfigError):
        GlobalMagnitude(bad)
    with pytest.raises(ConfigError):
        prune_model(net(), bad)



def test_bad_q_and_patterns_and_no_weights():
    with pytest.raises(ConfigError, match="-1"):
        StdThreshold(-1)
    with pytest.raises(ConfigError, match="conv9"):
        prune_model(net(), 0.5, include=["conv9"])
    with pytest.raises(ConfigError, match="exclude pattern 'fc9'"):
        prune_model(net(), 0.5, exclude="fc9")
    with pytest.raises(ConfigError, match="xx"):
        prune_model(net(), 0.5, overrides={"xx": 0.1})
    with pytest.raises(ConfigError, match="Sequential has no compressible tensor"):
        prune_model(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), 0.5)
    with pytest.raises(ConfigError, match="banana"):
        make_criterion("banana")
    with pytest.raises(ConfigError, match="q=abc"):
        make_criterion("q=abc")
    assert make_criterion("global=0.9") == GlobalMagnitude(0.9)
    assert make_criterion("sparsity=0.9") == TargetSparsity(0.9)
