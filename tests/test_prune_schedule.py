"""Iterative prune -> retrain: rising sparsity, lr / 10, survivors keep their values."""

import pytest
import torch
import torch.nn as nn

import nnshrink.prune.schedule as schedule_mod
from nnshrink.errors import ConfigError
from nnshrink.prune import GlobalMagnitude, StdThreshold, TargetSparsity, iterative_prune, ramp
from nnshrink.train import TrainConfig


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def test_ramp_rises_to_final():
    r = ramp(0.9, 3)
    assert [round(c.sparsity, 4) for c in r] == [round(1 - 0.1 ** (k / 3), 4) for k in (1, 2, 3)]
    assert ramp(StdThreshold(2.0), 2) == [StdThreshold(1.0), StdThreshold(2.0)]
    assert ramp(GlobalMagnitude(0.75), 2)[-1] == GlobalMagnitude(0.75)
    per_layer = ramp({"ip1": 0.96, "ip3": None}, 2)
    assert per_layer[0]["ip3"] is None and per_layer[1]["ip1"].sparsity == pytest.approx(0.96)
    with pytest.raises(ConfigError, match="0"):
        ramp(0.9, 0)


def test_iterative_prune_rounds_lr_and_survivors(tiny_dataset, monkeypatch):
    model = mlp()
    calls = []
    real_fit = schedule_mod.fit

    def spy(model, data, cfg, **kw):
        calls.append(cfg)
        snap = {n: (m.weight.detach().clone(), m.weight_mask.clone())
                for n, m in model.named_modules() if hasattr(m, "weight_mask")}
        calls.append(snap)
        return real_fit(model, data, cfg, **kw)

    monkeypatch.setattr(schedule_mod, "fit", spy)
    cfg = TrainConfig(epochs=1, lr=0.1, max_steps=10)
    report = iterative_prune(model, tiny_dataset, 0.8, rounds=3, train_cfg=cfg, progress=False)
    cfgs = calls[0::2]
    assert [c.lr for c in cfgs] == [pytest.approx(0.01)] * 3
    kept = [r.kept for r in report.rounds]
    assert kept[0] > kept[1] > kept[2] == pytest.approx(0.2, abs=1e-3)
    # masks only shrink; masks stay installed; pruned entries are exactly zero
    snaps = calls[1::2]
    for a, b in zip(snaps, snaps[1:]):
        for n in a:
            assert not torch.any(b[n][1] & ~a[n][1])
    for m in (model[1], model[3]):
        assert torch.all(m.weight[~m.weight_mask] == 0)
    # surviving weights were not re-initialised: they equal the pre-prune values before retraining
    for n, (w, mask) in snaps[0].items():
        assert torch.all(w[mask] != 0)
    d = report.as_dict()
    assert d["top1_before"] is not None and d["top1_after"] is not None and len(d["rounds"]) == 3
    assert d["kept_pct"] < 25


def test_survivors_keep_values_when_pruning(tiny_dataset):
    model = mlp()
    before = model[1].weight.detach().clone()
    from nnshrink.prune import prune_model

    prune_model(model, TargetSparsity(0.5))
    m = model[1].weight_mask
    assert torch.equal(model[1].weight[m], before[m])


def test_schedule_list_and_dict_targets(tiny_dataset):
    model = mlp()
    cfg = TrainConfig(epochs=1, lr=0.1, max_steps=3)
    rep = iterative_prune(model, tiny_dataset, [{"1": 0.5}, {"1": 0.9, "3": 0.5}], train_cfg=cfg,
                          progress=False, evaluate_rounds=False)
    rows = {r.name: r for r in rep.layers}
    assert rows["1.weight"].kept == pytest.approx(0.1, abs=1e-3)
    assert rows["3.weight"].kept == pytest.approx(0.5, abs=1e-2)
    with pytest.raises(ConfigError, match="both"):
        iterative_prune(mlp(), tiny_dataset, [0.5], rounds=2, train_cfg=cfg)
    with pytest.raises(ConfigError, match="1.5"):
        iterative_prune(mlp(), tiny_dataset, [0.5, 1.5], train_cfg=cfg)


def test_l2_regularised_training_runs_with_masks(tiny_dataset):
    model = mlp()
    cfg = TrainConfig(epochs=1, lr=0.1, max_steps=5, l1=1e-4, l2=1e-4)
    rep = iterative_prune(model, tiny_dataset, 0.5, train_cfg=cfg, progress=False)
    assert rep.rounds[0].kept == pytest.approx(0.5, abs=1e-3)
