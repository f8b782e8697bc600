"""BatchNorm recalibration: the statistics match the data after the weights changed."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nnshrink.batchnorm import batchnorm_layers, recalibrate_bn
from nnshrink.errors import ConfigError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.BatchNorm1d(3))


def test_running_stats_equal_the_exact_batch_statistics():
    net = _net().eval()
    with torch.no_grad():
        net[0].weight.mul_(3.0)  # the weights changed: the old statistics are stale
    x = torch.randn(64, 1, 8, 8)
    batches = [x[:32], x[32:]]
    assert recalibrate_bn(net, batches) == 2
    with torch.no_grad():
        h = net[0](x)
    torch.testing.assert_close(net[1].running_mean, h.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    # cumulative average of the two batches' unbiased variances
    v = torch.stack([net[0](b).detach().var(dim=(0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(net[1].running_var, v, rtol=1e-4, atol=1e-5)
    assert not net.training and not net[1].training  # modes restored
    assert net[1].momentum == 0.1


def test_dropout_stays_off_and_tuples_and_callables_are_accepted():
    net = _net().train()
    x = torch.randn(16, 1, 8, 8)
    recalibrate_bn(net, lambda: [(x, torch.zeros(16))])
    first = net[6].running_mean.clone()
    recalibrate_bn(net, [(x, None)])
    torch.testing.assert_close(net[6].running_mean, first)  # deterministic: dropout was in eval mode
    assert net.training and net[3].training  # the caller's train mode is back


def test_max_batches_and_no_batchnorm():
    net = _net()
    seen = []

    def gen():
        for i in range(10):
            seen.append(i)
            yield torch.randn(4, 1, 8, 8)

    assert recalibrate_bn(net, gen(), max_batches=3) == 3
    assert len(seen) == 3
    assert recalibrate_bn(nn.Linear(2, 2), [torch.randn(1, 2)]) == 0
    assert set(batchnorm_layers(net)) == {"1", "6"}


def test_empty_or_failing_batches_leave_the_old_statistics():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    with pytest.raises(ConfigError, match="no batches"):
        recalibrate_bn(net, [])
    with pytest.raises(RuntimeError):
        recalibrate_bn(net, [torch.randn(4, 1, 8, 8), torch.randn(4, 2, 8, 8)])  # 2nd batch: wrong channels
    for k, v in before.items():
        torch.testing.assert_close(net.state_dict()[k], v)
    with pytest.raises(ConfigError, match="max_batches"):
        recalibrate_bn(net, [torch.randn(4, 1, 8, 8)], max_batches=0)


# ---------------------------------------------------------------- in the pipeline
def bn_task():
    """A BN conv net trained on a synthetic task (each class lights up one row)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    n = 512
    x, y = torch.rand(n, 1, 12, 12) * 0.5, torch.randint(0, 4, (n,))
    x[torch.arange(n), 0, 3 * y] += 1.0
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.AdaptiveAvgPool2d((4, 1)), nn.Flatten(), nn.Linear(64, 4))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    for _ in range(4):
        for i in range(0, n, 64):
            opt.zero_grad()
            F.cross_entropy(net(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return net, x, y


def test_pruning_without_retraining_keeps_accuracy_with_recalibration():
    import copy
    from dataclasses import replace

    import nnshrink
    from nnshrink.recipes import load_recipe

    net, x, y = bn_task()

    @torch.no_grad()
    def top1(m):
        m.eval()
        return (m(x).argmax(1) == y).float().mean().item()

    recipe = load_recipe("prune")
    recipe = recipe.with_configs(prune=replace(recipe.prune, sparsity=0.8, rounds=1))
    plain = nnshrink.compress(copy.deepcopy(net), recipe, evaluate=top1, progress=False).report
    calibrated = nnshrink.compress(copy.deepcopy(net), recipe, evaluate=top1, progress=False,
                                   calibrate=lambda: (x[i:i + 64] for i in range(0, len(x), 64))).report
    assert plain["top1_before"] > 0.95
    assert calibrated["top1_after"] > 0.9 > plain["top1_after"] + 0.3  # measured: 1.00 vs 0.47
    assert any("not recalibrated" in w for w in plain["warnings"])
    assert not any("not recalibrated" in w for w in calibrated["warnings"])
    assert calibrated["stages"][0]["details"]["rounds"][0]["bn_recalibrated"] == [
        {"after": "pruning round 1", "batches": 8}]


def test_calibrate_refuses_one_shot_iterators_and_non_iterables():
    import nnshrink

    with pytest.raises(ConfigError, match="one-shot"):
        nnshrink.compress(_net(), "prune", calibrate=(torch.randn(4, 1, 8, 8) for _ in range(2)))
    with pytest.raises(ConfigError, match="calibrate must be"):
        nnshrink.compress(_net(), "prune", calibrate=3)


def test_calibration_batches_are_the_same_every_time():
    from nnshrink.batchnorm import calibration_batches

    x = torch.randn(1000, 1, 2, 2)
    source = calibration_batches(x, batches=3, batch_size=100, seed=1)
    first, second = list(source()), list(source())
    assert [b.shape[0] for b in first] == [100, 100, 100]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert sum(b.shape[0] for b in calibration_batches(x[:50])()) == 50


BN_FACTORY = '''
import torch
import torch.nn as nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))


def loaders():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (96,), generator=g)
    x = torch.rand(96, 1, 8, 8, generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=32), torch.utils.data.DataLoader(ds, batch_size=64)
'''


def test_data_factory_path_recalibrates_from_its_train_loader(tmp_path, monkeypatch, capsys):
    import json
    import sys

    from safetensors.torch import save_file

    from nnshrink.cli import main

    (tmp_path / "bnnets.py").write_text(BN_FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import bnnets

    save_file(bnnets.build().state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["compress", "w.safetensors", "-o", "w.nsk", "--model-factory", "bnnets:build", "--data-factory",
                 "bnnets:loaders", "--recipe", "prune", "--no-retrain", "--quiet", "--json", "-"]) == 0
    rep = json.loads(capsys.readouterr().out)
    # the 96 training images make one calibration batch of up to 128
    assert rep["stages"][0]["details"]["rounds"][0]["bn_recalibrated"] == [{"after": "pruning round 1", "batches": 1}]
    assert not any("not recalibrated" in w for w in rep["warnings"])
    sys.modules.pop("bnnets", None)
