"""Sensitivity sweep, its seeding of per-layer sparsities, the plot and the CLI."""

import json

import pytest
import torch
import torch.nn as nn

from nnshrink.errors import ConfigError
from nnshrink.prune import SensitivityResult, plot_sensitivity, sensitivity_sweep, sparsities_for_drop
from nnshrink.train import TrainConfig, fit


@pytest.fixture
def trained(tiny_dataset):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(model, tiny_dataset, TrainConfig(epochs=3, lr=0.1), eval_each_epoch=False, progress=False)
    return model


def test_sweep_restores_model_and_degrades(trained, tiny_dataset):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    res = sensitivity_sweep(trained, tiny_dataset, steps=[0.0, 0.5, 0.99])
    for k, v in trained.state_dict().items():
        assert torch.equal(v, before[k])
    assert set(res.curves) == {"1", "3"}
    assert res.curves["1"][0] == pytest.approx(res.baseline)
    assert res.curves["3"][-1] < res.baseline  # 99% of the last layer gone hurts


def test_sweep_recalibrates_batchnorm_at_every_point():
    from test_batchnorm import bn_task

    from nnshrink.data import Dataset

    net, x, y = bn_task()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = sensitivity_sweep(net, Dataset("rows", x, y, x, y), steps=[0.9], layers=["0"])
    assert res.bn_recalibrated and res.as_dict()["bn_recalibrated"]
    assert res.curves["0"][0] > 0.9  # stale statistics: 0.36 (measured), re-estimated: 1.0
    for k, v in net.state_dict().items():  # weights and running statistics come back
        assert torch.equal(v, before[k]), k


def test_sparsities_for_drop():
    res = SensitivityResult(0.90, [0.5, 0.8, 0.9, 0.95], {"a": [0.90, 0.895, 0.88, 0.70], "b": [0.5, 0.9, 0.9, 0.9]})
    assert sparsities_for_drop(res, 0.01) == {"a": 0.8, "b": 0.0}
    assert sparsities_for_drop(res, 0.03)["a"] == 0.9
    with pytest.raises(ConfigError, match="1.5"):
        sparsities_for_drop(res, 1.5)
    with pytest.raises(ConfigError, match="1.2"):
        sensitivity_sweep(nn.Linear(2, 2), None, steps=[0.5, 1.2])


def test_plot_png(tmp_path):
    res = SensitivityResult(0.9, [0.5, 0.9], {"a": [0.9, 0.8]})
    out = tmp_path / "s.png"
    plot_sensitivity(res, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli(tmp_path, tiny_idx_dir, capsys):
    from nnshrink.checkpoint import save_checkpoint
    from nnshrink.cli import main
    from nnshrink.models import build_model

    model = build_model("lenet300")
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(model, ckpt, "lenet300", {"num_classes": 10, "dropout": 0.0})
    png = tmp_path / "p.png"
    rc = main(["sensitivity", str(ckpt), "--dataset", "idx", "--data-dir", str(tiny_idx_dir),
               "--steps", "0.5,0.9", "--plot", str(png), "--json"])
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "sensitivity" in captured.err  # the progress bar, on stderr
    assert out["steps"] == [0.5, 0.9] and [l["name"] for l in out["layers"]] == ["ip1", "ip2", "ip3"]
    assert set(out["suggested_sparsity"]) == {"ip1", "ip2", "ip3"}
    assert png.exists()
    rc = main(["sensitivity", str(ckpt), "--dataset", "idx", "--data-dir", str(tiny_idx_dir),
               "--steps", "0.5", "--quiet"])
    assert rc == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "suggested sparsity" in captured.out
    rc = main(["sensitivity", str(ckpt), "--dataset", "idx", "--data-dir", str(tiny_idx_dir), "--steps", "0.5,1.2"])
    assert rc == 2
    assert "1.2" in capsys.readouterr().err
