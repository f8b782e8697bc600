"""The fold stage: BatchNorm folded into the conv / linear before it, PyTorch as the oracle."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nnshrink
from nnshrink.batchnorm import is_folded
from nnshrink.errors import ConfigError
from nnshrink.recipes import recipe_from_dict
from nnshrink.stages import Context, get_stage
from nnshrink.stages.fold import FoldConfig, fold_pairs


class ResNet(nn.Module):
    """Residual CNN: conv->BN pairs with and without conv bias, a non-affine BN, a BN
    after an addition (not foldable) and a Linear->BatchNorm1d pair."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False)
        self.post = nn.BatchNorm2d(8)  # after the residual sum: no single layer feeds it
        self.fc, self.bn_fc = nn.Linear(8 * 4 * 4, 16, bias=False), nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = F.relu(self.bn0(self.stem(x)))
        r = F.relu(self.bn1(self.conv1(h)))
        h = self.post(h + self.bn2(self.conv2(r)))
        h = F.adaptive_avg_pool2d(F.relu(h), 4).flatten(1)
        return self.head(F.relu(self.bn_fc(self.fc(h))))


def _random_stats(model: nn.Module) -> nn.Module:
    """Statistics and affine parameters far from their defaults, so folding is not trivial."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g))
                m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=g))
                    m.bias.copy_(torch.randn(n, generator=g))
    return model.eval()


def _net() -> ResNet:
    torch.manual_seed(0)
    return _random_stats(ResNet())


def test_pairs_come_from_the_graph():
    assert sorted(fold_pairs(_net())) == [("conv1", "bn1"), ("conv2", "bn2"), ("fc", "bn_fc"), ("stem", "bn0")]


def test_folded_outputs_equal_pytorch_and_zeros_stay_zeros():
    from nnshrink.prune import prune_model

    model = _net()
    prune_model(model, 0.5)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        want = copy.deepcopy(model).eval()(x)
    zeros = {n: (p == 0) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    ctx = Context()
    details = get_stage("fold").apply(model, FoldConfig(), ctx)
    assert {f["bn"] for f in details["folded"]} == {"bn0", "bn1", "bn2", "bn_fc"}
    assert details["kept"] == ["post"] and any("post" in n for n in ctx.notes)
    with torch.no_grad():
        got = model.eval()(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for n, z in zeros.items():
        assert torch.equal(dict(model.named_parameters())[n] == 0, z), n
    assert all(is_folded(getattr(model, b)) for b in ("bn0", "bn1", "bn2", "bn_fc"))
    assert not is_folded(model.post)


def test_fold_then_share_round_trips_and_folded_bn_stays_folded(tmp_path):
    model = _net()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,))
    trained = []

    def fine_tune(m, epochs):  # train mode: a folded BN must not normalise by batch statistics
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)
        m.train()
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
        trained.append(epochs)

    recipe = recipe_from_dict({"stages": ["prune", "fold", "share", "encode"],
                               "prune": {"sparsity": 0.5, "rounds": 1, "retrain_epochs": 1},
                               "share": {"fc_bits": 6, "conv_bits": 6}})
    result = nnshrink.compress(model, recipe, fine_tune=fine_tune, calibrate=[x[:32], x[32:]], progress=False)
    assert trained  # the folded model was retrained
    fold = next(s for s in result.report["stages"] if s["stage"] == "fold")
    assert len(fold["details"]["folded"]) == 4
    share = next(s for s in result.report["stages"] if s["stage"] == "share")
    assert share["details"]["bn_recalibrated"]  # only "post" was re-estimated; the folded ones kept
    assert all(is_folded(getattr(model, b)) for b in ("bn0", "bn1", "bn2", "bn_fc"))
    result.save(tmp_path / "r.nsk")
    restored = nnshrink.load(tmp_path / "r.nsk", model=ResNet())  # the user's class, BN modules and all
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(x), result.model.eval()(x), rtol=1e-5, atol=1e-5)


def test_untraceable_model_is_left_alone_with_a_note():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                x = -x
            return self.bn(self.conv(x))

    model = _random_stats(Dynamic())
    before = copy.deepcopy(model.state_dict())
    ctx = Context()
    details = get_stage("fold").apply(model, FoldConfig(), ctx)
    assert details["folded"] == [] and details["untraceable"]
    assert any("does not trace" in n for n in ctx.notes)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_fold_goes_before_share():
    with pytest.raises(ConfigError, match="fold"):
        recipe_from_dict({"stages": ["share", "fold", "encode"]})
    assert recipe_from_dict({"stages": ["fold", "encode"]}).stages == ("fold", "encode")
