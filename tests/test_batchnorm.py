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
