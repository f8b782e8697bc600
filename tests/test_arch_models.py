"""SqueezeNet, MobileNet and VGG by name: structure, counts, trainability, bad config."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from nnshrink.arch.profile import profile_named
from nnshrink.data import Dataset
from nnshrink.checkpoint import load_checkpoint, save_checkpoint
from nnshrink.errors import ConfigError
from nnshrink.models import build_model, model_names, resolve_config
from nnshrink.models.blocks import DepthwiseSeparable, Fire
from nnshrink.train import TrainConfig, default_train_config, fit

SMALL = [("squeezenet-small", {}), ("mobilenet-small", {}), ("mobilenet-small", {"width": 0.5}),
         ("mobilenet-small", {"width": 0.25}), ("vgg-small", {})]


def test_names_registered():
    names = set(model_names())
    assert {"squeezenet1_0", "squeezenet1_1", "squeezenet-small", "mobilenet_v1", "mobilenet-small",
            "vgg16", "vgg-small", "factorized"} <= names
    for name in ("squeezenet-small", "mobilenet-small"):
        assert default_train_config(name) != TrainConfig()


@pytest.mark.parametrize("name, cfg", SMALL)
def test_small_models_forward(name, cfg):
    model = build_model(name, **cfg)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name, side", [("squeezenet1_0", 224), ("squeezenet1_1", 224), ("mobilenet_v1", 224),
                                        ("vgg16", 224)])
def test_imagenet_models_on_meta(name, side):
    with torch.device("meta"):
        model = build_model(name)
        assert model(torch.zeros(1, 3, side, side)).shape == (1, 1000)


def test_squeezenet_structure():
    model = build_model("squeezenet1_0")
    fires = [m for m in model.modules() if isinstance(m, Fire)]
    assert len(fires) == 8 and not any(isinstance(m, nn.Linear) for m in model.modules())
    assert sum(m.bypass for m in build_model("squeezenet1_0", bypass=True).modules() if isinstance(m, Fire)) == 4
    small = build_model("squeezenet-small")
    assert sum(p.numel() for p in small.parameters()) < 431_080 / 5  # >5x smaller than LeNet-5


def test_mobilenet_width_scales_channels():
    full, half = build_model("mobilenet-small"), build_model("mobilenet-small", width=0.5)
    f = [m.pw.out_channels for m in full.modules() if isinstance(m, DepthwiseSeparable)]
    h = [m.pw.out_channels for m in half.modules() if isinstance(m, DepthwiseSeparable)]
    assert h == [c // 2 for c in f]
    # Mult-adds and params scale roughly with alpha^2.
    p1, p5 = profile_named("mobilenet-small"), profile_named("mobilenet-small", width=0.5)
    assert 3 < p1.total_macs / p5.total_macs < 4.2 and 3 < p1.total_params / p5.total_params < 4.2


def test_mobilenet_resolution_scales_macs_not_params():
    a, b = profile_named("mobilenet_v1", resolution=224), profile_named("mobilenet_v1", resolution=128)
    assert a.total_params == b.total_params and 2.9 < a.total_macs / b.total_macs < 3.2  # ~ (224/128)^2


@pytest.mark.parametrize("name, kw, word", [
    ("mobilenet_v1", {"width": 0}, "alpha must be > 0; got 0"),
    ("mobilenet_v1", {"width": -1.0}, "got -1.0"),
    ("mobilenet-small", {"width": 0.02}, "rounds channels 32 to 0"),
    ("mobilenet_v1", {"resolution": 225}, "got 225"),
    ("mobilenet-small", {"resolution": 8}, "got 8"),
    ("squeezenet-small", {"dropout": 1.5}, "dropout"),
    ("squeezenet1_0", {"num_classes": 0}, "num_classes"),
    ("mobilenet_v1", {"depth": 3}, "no option 'depth'"),
])
def test_bad_config(name, kw, word):
    with pytest.raises(ConfigError, match=word):
        build_model(name, **kw)


@pytest.mark.parametrize("name, cfg", SMALL[:2])
def test_small_models_learn_and_roundtrip(name, cfg, tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, **cfg)
    small = Dataset("tiny", tiny_dataset.train_x[:120], tiny_dataset.train_y[:120], tiny_dataset.test_x[:50],
                    tiny_dataset.test_y[:50])
    res = fit(model, small, default_train_config(name).replace(epochs=4, batch_size=40, lr=0.01,
                                                                 optimizer="adam", weight_decay=0.0),
              progress=False, eval_each_epoch=False)
    assert res.epochs[-1]["loss"] < 0.9 * res.epochs[0]["loss"]
    path = save_checkpoint(model, tmp_path / "m.safetensors", name, resolve_config(name, **cfg))
    loaded, _ = load_checkpoint(path)
    model.eval(), loaded.eval()
    x = small.test_x[:8]
    torch.testing.assert_close(loaded(x), model(x))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nnshrink", *args], capture_output=True, text=True, timeout=120)


def test_cli_profile_width_resolution_json():
    proc = _cli("profile", "--model", "mobilenet_v1", "--width", "0.5", "--resolution", "160", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    prof = profile_named("mobilenet_v1", width=0.5, resolution=160)
    assert report["total_params"] == prof.total_params and report["total_macs"] == prof.total_macs
    assert report["input_shape"] == [3, 160, 160]
    bad = _cli("profile", "--model", "mobilenet_v1", "--width", "-0.5")
    assert bad.returncode == 2 and "-0.5" in bad.stderr
    bad = _cli("profile", "--model", "squeezenet1_0", "--width", "0.5")
    assert bad.returncode == 2 and "no width multiplier" in bad.stderr
