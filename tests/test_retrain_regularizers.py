"""Options against overfitting in retraining: weight averaging, pixel shifts, label smoothing."""

import pytest
import torch
import torch.nn.functional as F

from nnshrink.averaging import WeightAverage
from nnshrink.data import random_shift
from nnshrink.errors import ConfigError
from nnshrink.models import build_model
from nnshrink.prune import prune_model
from nnshrink.recipes import recipe_from_dict
from nnshrink.stages import fit_trainer
from nnshrink.train import TrainConfig, fit


def test_random_shift_moves_each_image_within_range_and_fills_zeros():
    x = torch.rand(64, 1, 6, 7) + 0.5  # no zero pixel: a zero in the output marks the uncovered border
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(len(x)):
        padded = F.pad(x[i], (2, 2, 2, 2))
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[:, dy:dy + 6, dx:dx + 7])]
        assert len(hits) == 1, f"image {i} is not one shift of its input"
        seen.add(hits[0])
    assert len(seen) > 10  # shifts differ between images
    again = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert random_shift(x, 0, torch.Generator()) is x


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_random_shift_refuses_a_bad_shift(bad):
    with pytest.raises(ConfigError, match=f"shift must be .*got {bad!r}"):
        random_shift(torch.zeros(2, 1, 4, 4), bad, torch.Generator())


def test_weight_average_is_the_bias_corrected_ema():
    p = torch.nn.Parameter(torch.tensor([0.0]))
    avg = WeightAverage([p], 0.9)
    expected = 0.0
    for t, value in enumerate([1.0, 2.0, 4.0, 8.0, 3.0], start=1):
        with torch.no_grad():
            p.fill_(value)
        avg.update()
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * value
    avg.apply()
    assert float(p.detach()) == pytest.approx(expected)
    assert float(p.detach()) != 3.0


def test_averaged_retraining_keeps_the_mask_and_differs_from_the_last_step(tiny_dataset):
    def run(average):
        torch.manual_seed(0)
        model = build_model("lenet300")
        prune_model(model, None, overrides={"ip1.weight": 0.9, "ip2.weight": 0.8, "ip3.weight": 0.5})
        pruned = model.ip1.weight.detach() == 0
        fit(model, tiny_dataset, TrainConfig(epochs=1, batch_size=32, average=average), progress=False,
            eval_each_epoch=False)
        return model, pruned

    plain, _ = run(0.0)
    averaged, pruned = run(0.9)
    assert pruned.float().mean() > 0.85
    assert torch.all(averaged.ip1.weight.detach()[pruned] == 0)
    assert not torch.allclose(plain.ip1.weight, averaged.ip1.weight)


def test_label_smoothing_and_shift_change_training_and_stay_seeded(tiny_dataset):
    def run(**kw):
        torch.manual_seed(0)
        m = build_model("lenet300")
        fit(m, tiny_dataset, TrainConfig(max_steps=5, batch_size=32, seed=3, **kw), progress=False,
            eval_each_epoch=False)
        return m.ip1.weight.detach().clone()

    plain = run()
    for kw in (dict(shift=1), dict(label_smoothing=0.1)):
        assert not torch.equal(run(**kw), plain)
        assert torch.equal(run(**kw), run(**kw))


@pytest.mark.parametrize("kw, msg", [(dict(average=1.0), "train.average must be in \\[0, 1\\).*got 1.0"),
                                     (dict(shift=-1), "shift must be .*got -1"),
                                     (dict(label_smoothing=1), "label_smoothing must be in \\[0, 1\\); got 1")])
def test_train_config_refuses_bad_options(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**kw)


@pytest.mark.parametrize("table, msg", [
    ({"prune": {"average": 1.2}}, "prune.average must be in \\[0, 1\\).*got 1.2"),
    ({"share": {"average": -0.5}}, "share.average must be in \\[0, 1\\).*got -0.5"),
    ({"prune": {"shift": 9}}, "prune.shift must be an integer number of pixels in 0..8.*got 9"),
    ({"share": {"label_smoothing": 1.0}}, "share.label_smoothing must be in \\[0, 1\\); got 1.0"),
    ({"prune": {"label_smoothing": 0.1, "distill": 0.5}}, "prune.label_smoothing .* prune.distill"),
    ({"prune": {"schedule": "warp"}}, "prune.schedule must be one of cosine, step, constant .*got 'warp'"),
])
def test_bad_retraining_options_in_a_recipe(table, msg):
    with pytest.raises(ConfigError, match=msg):
        recipe_from_dict({"stages": ["prune", "share", "encode"], **table})


def test_recipe_options_reach_the_training_loop(tiny_dataset, monkeypatch):
    import nnshrink.train as train

    seen = []
    monkeypatch.setattr(train, "fit", lambda model, data, cfg, **kw: seen.append(cfg))
    recipe = recipe_from_dict({"stages": ["prune", "share", "encode"],
                               "prune": {"average": 0.99, "shift": 2, "label_smoothing": 0.05,
                                         "schedule": "constant"}})
    from nnshrink.stages import retrain_options

    trainer = fit_trainer(tiny_dataset, TrainConfig())
    trainer(build_model("lenet300"), 1.0, {"stage": "prune", **retrain_options(recipe.prune)})
    trainer(build_model("lenet300"), 1.0, {"stage": "share", **retrain_options(recipe.share)})
    assert (seen[0].average, seen[0].shift, seen[0].label_smoothing, seen[0].schedule) == (0.99, 2, 0.05, "constant")
    assert (seen[1].average, seen[1].shift, seen[1].label_smoothing, seen[1].schedule) == (0.0, 0, 0.0, "cosine")

