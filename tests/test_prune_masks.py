"""Masks live in the model, never leak into state_dict, and keep pruned weights at 0.0."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from nnshrink.errors import ConfigError
from nnshrink.prune import (
    MASK, TargetSparsity, apply_masks, current_masks, dropout_for, export_sparse, prune_model,
    reapply_masks, remove_masks, scale_dropout, sparsity_report, total_kept,
)
from nnshrink.train import TrainConfig, fit


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))


def pruned_positions(model):
    return {n: ~m.weight_mask for n, m in model.named_modules() if MASK in m._buffers}


def test_state_dict_keys_unchanged_and_no_mask_leak():
    model = small_net()
    keys = list(model.state_dict())
    prune_model(model, TargetSparsity(0.5))
    assert list(model.state_dict()) == keys
    assert all(isinstance(m.weight, nn.Parameter) for m in (model[0], model[3]))
    assert model[0].weight_mask.dtype == torch.bool
    # the exported state has the zeros baked in already
    assert int((model.state_dict()["3.weight"] == 0).sum()) == int((~model[3].weight_mask).sum())
    fresh = small_net()
    fresh.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero_while_training(opt, tiny_dataset):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    # give the optimizer's momentum / Adam state a reason to revive weights:
    # train dense first, then prune, then train again many steps with weight decay
    prune_model(model, TargetSparsity(0.7))
    dead = pruned_positions(model)
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if MASK in m._buffers}
    cfg = TrainConfig(epochs=100, lr=0.05 if opt == "sgd" else 1e-2, momentum=0.9, weight_decay=1e-2,
                      optimizer=opt, batch_size=32, max_steps=60, l1=1e-4, l2=1e-4)
    fit(model, tiny_dataset, cfg, eval_each_epoch=False, progress=False)  # no after_step: masks hold
    for n, m in model.named_modules():
        if n in dead:
            assert torch.all(m.weight[dead[n]] == 0.0)
            assert not torch.equal(m.weight, before[n])  # it did train


def test_grad_hook_zeroes_masked_gradients():
    model = small_net()
    prune_model(model, TargetSparsity(0.5))
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    for m in (model[0], model[3]):
        assert torch.all(m.weight.grad[~m.weight_mask] == 0)
        assert m.weight.grad[m.weight_mask].abs().sum() > 0


def test_reapply_masks_kills_revived_weights():
    model = small_net()
    prune_model(model, 0.5)
    with torch.no_grad():
        model[3].weight.add_(1.0)
    reapply_masks(model)
    assert torch.all(model[3].weight[~model[3].weight_mask] == 0)


def test_remove_masks_bakes_in_and_drops_hooks():
    model = small_net()
    prune_model(model, 0.6)
    nz = int(torch.count_nonzero(model[3].weight))
    remove_masks(model)
    assert not any(MASK in m._buffers for m in model.modules())
    assert int(torch.count_nonzero(model[3].weight)) == nz
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    assert int(torch.count_nonzero(model[3].weight.grad)) > nz  # gradients flow everywhere again


def test_masks_only_shrink():
    model = small_net()
    prune_model(model, 0.5)
    first = model[3].weight_mask.clone()
    with torch.no_grad():  # make pruned positions look large: still must not come back
        model[3].weight.copy_(torch.where(first, torch.full_like(model[3].weight, 1e-6), model[3].weight))
    prune_model(model, 0.6)
    assert not torch.any(model[3].weight_mask & ~first)


def test_sparsity_report_and_export_sparse():
    model = small_net()
    prune_model(model, 0.75)
    rows = {r.name: r for r in sparsity_report(model)}
    assert rows["3.weight"].params == 4 * 26 * 26 * 10
    assert rows["3.weight"].nonzero == int(round(0.25 * rows["3.weight"].params))
    assert rows["3.bias"].nonzero == 10  # biases stay dense
    params, nonzero, kept = total_kept(rows.values())
    assert params == sum(p.numel() for p in model.parameters())
    sp = export_sparse(model)
    assert set(sp) == {"0.weight", "3.weight"}
    for key, t in sp.items():
        np.testing.assert_array_equal(t.to_dense(), model.state_dict()[key].numpy())
        assert t.values.size == int(t.mask.sum())


def test_apply_masks_by_name_and_errors():
    model = small_net()
    mask = torch.rand(10, 4 * 26 * 26) > 0.5
    apply_masks(model, {"3.weight": mask})
    assert torch.equal(model[3].weight_mask, mask)
    with pytest.raises(ConfigError, match="nope"):
        apply_masks(model, {"nope": mask})
    with pytest.raises(ConfigError, match="shape"):
        apply_masks(model, {"3": torch.ones(3, 3, dtype=torch.bool)})
    assert list(current_masks(model)) == ["3.weight"]


def test_dropout_scaling():
    assert dropout_for(0.5, 100, 25) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="1.5"):
        dropout_for(1.5, 1, 1)
    from nnshrink.models import build_model

    net = build_model("lenet300", dropout=0.5)
    prune_model(net, 0.75)
    assert scale_dropout(net) == pytest.approx(0.5 * 0.5, rel=1e-3)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimizer_state_from_dense_training_cannot_revive(opt_name):
    """Momentum / Adam moments built up BEFORE pruning would move pruned weights; the
    step hook stops them with no call in the loop (the control without it shows they move)."""
    from nnshrink.prune import masks

    def run(with_hook):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
               if opt_name == "sgd" else torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2))
        x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
        for step in range(80):
            if step == 20:
                prune_model(model, 0.6)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return max(float(m.weight.detach()[~m.weight_mask].abs().max()) for m in (model[0], model[2]))

    assert run(with_hook=True) == 0.0
    masks._STEP_HOOK.remove()  # the control: no step hook
    try:
        assert run(with_hook=False) > 0.0  # the hook is what keeps them dead
    finally:
        masks._STEP_HOOK = register_optimizer_step_post_hook(masks._rezero_after_step)
