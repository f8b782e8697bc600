"""Distillation from the dense net during retraining (recipe ``distill``)."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nnshrink import pipeline
from nnshrink.data import Dataset
from nnshrink.distill import DistillLoss, frozen_teacher, soft_target_loss
from nnshrink.errors import ConfigError, StageError
from nnshrink.recipes import recipe_from_dict
from nnshrink.stages import Context, fit_trainer, top1_metric
from nnshrink.train import TrainConfig, fit


def test_soft_target_loss_is_hintons_kl_times_t_squared():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    p, q = F.softmax(t / 3, 1), F.softmax(s / 3, 1)
    oracle = (p * (p.log() - q.log())).sum(1).mean() * 9
    assert soft_target_loss(s, t, 3.0).item() == pytest.approx(oracle.item(), rel=1e-5)
    assert soft_target_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_loss_mixes_labels_and_soft_targets():
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    x, y, logits = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(6, 3)
    ce = F.cross_entropy(logits, y)
    soft = soft_target_loss(logits, teacher(x).detach(), 2.0)
    assert DistillLoss(teacher, 0.0)(logits, x, y).item() == pytest.approx(ce.item())
    assert DistillLoss(teacher, 0.7, 2.0)(logits, x, y).item() == pytest.approx((0.3 * ce + 0.7 * soft).item(),
                                                                                rel=1e-6)
    assert not any(p.requires_grad for p in frozen_teacher(teacher).parameters())
    assert all(p.requires_grad for p in teacher.parameters())  # the copy is frozen, not the original


@pytest.mark.parametrize("table, msg", [
    ({"prune": {"distill": 1.5}}, "prune.distill must be in \\[0, 1\\] .*got 1.5"),
    ({"share": {"distill_temperature": 0}}, "share.distill_temperature must be a finite number > 0; got 0"),
    ({"distill": -0.1}, "distill must be in \\[0, 1\\] .*got -0.1"),
    ({"distill": 0.5, "prune": {"distill": 0.5}}, "distill given both at the top level and in \\[prune\\]"),
])
def test_bad_distill_recipes(table, msg):
    with pytest.raises(ConfigError, match=msg):
        recipe_from_dict({"stages": ["prune", "share", "encode"], **table})


def test_top_level_distill_reaches_every_retraining_stage():
    r = recipe_from_dict({"stages": ["prune", "share", "encode"], "distill": 0.7, "distill_temperature": 3})
    assert (r.prune.distill, r.share.distill, r.prune.distill_temperature, r.share.distill_temperature) == \
        (0.7, 0.7, 3.0, 3.0)
    assert r.distills and not recipe_from_dict({"stages": ["prune", "encode"]}).distills
    with pytest.raises(ConfigError, match="have none"):
        recipe_from_dict({"stages": ["binary", "encode"], "distill": 0.5})


def _shifted(ds: Dataset, shift: int) -> Dataset:
    """The same inputs with wrong labels: only a teacher can keep the net right."""
    return Dataset(ds.name, ds.train_x, (ds.train_y + shift) % 10, ds.test_x, ds.test_y)


def test_distilled_retraining_follows_the_teacher_not_the_labels(tiny_dataset):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(net, tiny_dataset, TrainConfig(epochs=4, batch_size=32), progress=False, eval_each_epoch=False)
    dense = top1_metric(tiny_dataset)(net)
    bad_labels = _shifted(tiny_dataset, 3)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    after = {}
    for weight in (0.0, 1.0):
        student = frozen_teacher(net).train().requires_grad_(True)
        ctx = Context(trainer=fit_trainer(bad_labels, cfg, progress=False))
        ctx.keep_teacher(net)
        assert ctx.retrain(student, 2, "prune", distill=weight, temperature=2.0)
        after[weight] = top1_metric(tiny_dataset)(student)
    assert dense > 0.5
    assert after[1.0] > dense - 0.1  # the teacher's targets keep it where it was
    assert after[0.0] < 0.5 * dense  # the wrong labels alone wreck it: the hook really changed the loss


def test_distill_without_teacher_or_with_a_users_loop():
    net = nn.Linear(3, 2)
    ctx = Context(trainer=fit_trainer(None, TrainConfig(), progress=False))
    with pytest.raises(StageError, match="needs the dense net as teacher"):
        ctx.retrain(net, 1, "share", distill=0.5)
    calls = []
    user = Context(trainer=lambda m, e, hints: calls.append(e))
    assert user.retrain(net, 1, "share", distill=0.5)
    assert calls == [1] and any("distill ignored" in n for n in user.notes)


def test_pipeline_keeps_the_dense_net_as_teacher(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    dense = {k: v.clone() for k, v in net.state_dict().items()}
    recipe = recipe_from_dict({"stages": ["prune", "share", "encode"], "distill": 0.5,
                               "prune": {"sparsity": 0.8, "rounds": 2, "retrain_epochs": 0.5},
                               "share": {"fc_bits": 4, "finetune_epochs": 0.5}})
    ctx = Context(trainer=fit_trainer(tiny_dataset, TrainConfig(batch_size=32), progress=False),
                  metric=top1_metric(tiny_dataset), progress=False)
    pipeline.compress_model(net, recipe, ctx, metadata=pipeline.archive_metadata(None, {}, {}))
    teacher = ctx.teacher.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in dense.items())
    assert math.isclose(float((net[1].weight == 0).float().mean()), 0.8, abs_tol=0.01)
