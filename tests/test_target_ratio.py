"""prune.target_ratio: per-layer sparsities from measured sensitivity and encoded bytes."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import nnshrink
from nnshrink import pipeline
from nnshrink.errors import ConfigError
from nnshrink.prune import target_ratio
from nnshrink.prune.target_ratio import encoded, kept_count, magnitude_order, sparsity_options
from nnshrink.prune.criteria import TargetSparsity
from nnshrink.recipes import PruneConfig, recipe_from_dict
from nnshrink.stages import Context, top1_metric
from nnshrink.train import TrainConfig, fit

STEPS = (0.5, 0.8, 0.9, 0.95, 0.98)
RECIPE = {"stages": ["prune", "share", "encode"], "target_ratio": 20,
          "prune": {"rounds": 1, "retrain_epochs": 1}, "share": {"fc_bits": 4, "finetune_epochs": 0},
          "encode": {"half_dense": True}}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture
def model(tiny_dataset, monkeypatch):
    monkeypatch.setattr(target_ratio, "STEPS", STEPS)  # fewer sweep points: a fast test
    m = mlp()
    fit(m, tiny_dataset, TrainConfig(epochs=3, batch_size=32), progress=False, eval_each_epoch=False)
    return m


def test_magnitude_order_matches_target_sparsity():
    w = torch.randn(37, 23)
    w[0, :5] = 0.5  # ties
    order = magnitude_order(w.numpy())
    for s in (0.0, 0.3, 0.9, 0.99):
        t = encoded(tuple(w.shape), w.numpy(), kept_count(w.numel(), s), order, None)
        mask = TargetSparsity(s)(w, torch.ones_like(w, dtype=torch.bool)).numpy()
        got = np.ones(w.shape, bool) if s == 0 else t.mask
        assert (got == mask).all()


def test_options_measure_real_bytes_and_the_sweep(model, tiny_dataset):
    recipe = recipe_from_dict(RECIPE)
    ctx = Context(metric=top1_metric(tiny_dataset), progress=False)
    meta = pipeline.archive_metadata(None, {}, {})
    options, fixed, sweep = sparsity_options(model, recipe, ctx, meta, STEPS)
    assert list(options) == ["1.weight", "3.weight", "5.weight"]
    for opts in options.values():
        assert [o.setting for o in opts] == [0.0, *STEPS]
        assert all(o.cost >= 0 for o in opts) and opts[0].cost == 0.0
        sizes = [o.bytes for o in opts]  # more pruning, fewer bytes (dense may be smaller than 50%)
        assert sizes[1:] == sorted(sizes[1:], reverse=True)
    big = [o.bytes for o in options["1.weight"]]
    assert big == sorted(big, reverse=True)
    assert 784 * 48 * 0.4 < options["1.weight"][0].bytes < 784 * 48 * 0.6  # 4-bit, dense: ~half a byte each
    assert 90 * 2 <= fixed < 90 * 2 + 1500  # float16 biases and the header
    curve = dict((layer["name"], layer["top1"]) for layer in sweep["layers"])["1"]
    assert [o.cost for o in options["1.weight"][1:]] == pytest.approx(
        [max(0.0, sweep["baseline_top1"] - a) for a in curve])


def test_compress_lands_near_the_target(model, tiny_dataset):
    def fine_tune(m, epochs):
        fit(m, tiny_dataset, TrainConfig(epochs=epochs, batch_size=32, lr=0.01), progress=False,
            eval_each_epoch=False)

    res = nnshrink.compress(model, recipe_from_dict(RECIPE), fine_tune=fine_tune,
                            evaluate=top1_metric(tiny_dataset), progress=False)
    rep, alloc = res.report, res.report["allocation"]
    original = 4 * sum(p.numel() for p in mlp().parameters())
    assert alloc["target_ratio"] == 20 and alloc["budget_bytes"] == original // 20
    assert alloc["bytes"] <= alloc["budget_bytes"]
    # the estimate is the real size within a few percent, so the ratio lands near the target
    assert abs(rep["compressed_bytes"] - alloc["bytes"]) / rep["compressed_bytes"] < 0.05
    assert 18 < rep["ratio"] < 26
    chosen = {n: v["setting"] for n, v in alloc["layers"].items() if v["setting"] > 0}
    assert rep["recipe"]["prune"]["layers"] == chosen and rep["recipe"]["prune"]["target_ratio"] is None
    kept = {r["name"]: r["nonzero"] / r["params"] for r in rep["layers"] if r["name"].endswith("weight")}
    last = rep["stages"][0]["details"]["reallocated"][-1]  # the look after the final retraining
    for name, s in chosen.items():  # at least as sparse as allocated, where the last look put it
        assert kept[name] <= 1 - s + 0.01
        assert kept[name] == pytest.approx(1 - last["layers"][name]["setting"], abs=0.01)


def test_without_metric_or_out_of_reach(model, tiny_dataset):
    with pytest.raises(ConfigError, match="target_ratio = 20 measures each layer's sensitivity"):
        nnshrink.compress(model, recipe_from_dict(RECIPE), progress=False)
    far = recipe_from_dict({**RECIPE, "target_ratio": 5000})
    with pytest.raises(ConfigError, match="target_ratio = 5000 .* out of reach"):
        nnshrink.compress(model, far, evaluate=top1_metric(tiny_dataset), progress=False)
    assert int((model[1].weight != 0).sum()) == 784 * 48  # nothing happened to it


@pytest.mark.parametrize("table, msg", [
    ({"prune": {"target_ratio": 1.0}}, "target_ratio must be a finite number > 1; got 1.0"),
    ({"prune": {"target_ratio": float("inf")}}, "target_ratio = inf: expected finite float"),
    ({"prune": {"target_ratio": 30, "layers": {"ip1": 0.9}}}, "drop prune.layers \\(ip1\\)"),
    ({"prune": {"target_ratio": 30, "method": "std"}}, "prune.method must be 'sparsity'; got 'std'"),
    ({"target_ratio": 30, "prune": {"target_ratio": 30}}, "both at the top level and in \\[prune\\]"),
])
def test_bad_recipes(table, msg):
    with pytest.raises(ConfigError, match=msg):
        recipe_from_dict({"stages": ["prune", "encode"], **table})


def test_top_level_needs_prune_and_lands_in_prune():
    with pytest.raises(ConfigError, match="have no 'prune'"):
        recipe_from_dict({"stages": ["share", "encode"], "target_ratio": 30})
    assert recipe_from_dict({"stages": ["prune", "encode"], "target_ratio": 30}).prune.target_ratio == 30
    assert PruneConfig(target_ratio=30).target_ratio == 30


def test_measured_options_reach_only_upward_and_follow_the_weights(model):
    from nnshrink.prune import prune_model
    from nnshrink.prune.target_ratio import measured_options

    recipe = recipe_from_dict(RECIPE)
    meta = pipeline.archive_metadata(None, {}, {})
    costs = {n: {0.0: 0.0, **{s: s / 10 for s in STEPS}} for n in ("1.weight", "3.weight", "5.weight")}
    before, fixed = measured_options(model, recipe, meta, costs)
    assert [o.setting for o in before["1.weight"]] == [0.0, *STEPS]
    prune_model(model, None, overrides={"1.weight": 0.85})
    after, fixed_after = measured_options(model, recipe, meta, costs)
    assert [o.setting for o in after["1.weight"]] == [0.9, 0.95, 0.98]  # a pruned weight cannot come back
    assert [(o.setting, o.cost) for o in after["3.weight"]] == [(o.setting, o.cost) for o in before["3.weight"]]
    assert fixed_after == fixed
    with torch.no_grad():  # spread the kept values of one layer: its shared indices cost more
        w = model[3].weight
        w.copy_(torch.sign(w) * torch.rand_like(w))
    spread, _ = measured_options(model, recipe, meta, costs)
    assert [o.bytes for o in spread["3.weight"]] != [o.bytes for o in after["3.weight"]]


def test_looks_reprune_to_fit_and_the_estimate_matches_the_file(model, tiny_dataset):
    def fine_tune(m, epochs):
        fit(m, tiny_dataset, TrainConfig(epochs=epochs, batch_size=32, lr=0.01), progress=False,
            eval_each_epoch=False)

    recipe = recipe_from_dict({**RECIPE, "prune": {"rounds": 2, "retrain_epochs": 1}})
    res = nnshrink.compress(model, recipe, fine_tune=fine_tune, evaluate=top1_metric(tiny_dataset), progress=False)
    rep = res.report
    looks = rep["stages"][0]["details"]["reallocated"]
    assert looks[0]["before_round"] == 2 and "after_round" in looks[1]
    assert 2 <= len(looks) <= 1 + target_ratio.FINAL_LOOKS
    for look in looks:
        assert look["budget_bytes"] == rep["allocation"]["budget_bytes"]
    last = looks[-1]
    kept = {r["name"]: r["nonzero"] / r["params"] for r in rep["layers"] if r["name"].endswith("weight")}
    for name, v in last["layers"].items():  # the model is where the last look measured it
        assert kept[name] == pytest.approx(1 - v["setting"], abs=0.01)
    if last["pruned_more"]:  # it pruned more after its final measurement: then the record says so
        assert len(looks) == 1 + target_ratio.FINAL_LOOKS
    else:  # measured on the final weights: the file is the estimate, within the centroid tuning's drift
        assert abs(rep["compressed_bytes"] - last["bytes"]) / rep["compressed_bytes"] < 0.02


def test_fine_candidates_step_up_with_interpolated_costs():
    got = target_ratio.fine_candidates(0.9, {0.0: 0.0, 0.9: 0.01, 0.95: 0.03})
    assert list(got)[:3] == pytest.approx([0.9, 0.9025, 0.905])
    assert got[0.9] == pytest.approx(0.01) and list(got.values())[2] == pytest.approx(0.012)
    assert max(got) == pytest.approx(0.9 + target_ratio.FINE_SPAN)
    assert max(target_ratio.fine_candidates(0.99, {0.0: 0.0, 0.99: 1.0})) < 1.0
