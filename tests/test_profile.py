"""The profiler's arithmetic against the literature, exactly (methods.md section 1)."""

from fractions import Fraction

import pytest
import torch.nn as nn

from nnshrink.arch.profile import format_profile, profile_model, profile_named
from nnshrink.errors import ConfigError
from nnshrink.models.blocks import AsymmetricConv, Bottleneck, Fire, StackedConv


def params(module, shape):
    return profile_model(module, shape).total_params


def test_bottleneck_example_221184_vs_129024():
    direct = profile_model(nn.Conv2d(192, 128, 3, padding=1, bias=False), (192, 28, 28))
    bottle = profile_model(Bottleneck(192, 128, 3, mid=96, bias=False), (192, 28, 28))
    assert direct.total_params == 221_184
    assert bottle.total_params == 129_024
    assert direct.total_macs == 221_184 * 28 * 28 and bottle.total_macs == 129_024 * 28 * 28
    half = params(Bottleneck(192, 128, 3, mid=48, bias=False), (192, 28, 28))
    assert half == 192 * 48 + 9 * 48 * 128 and Fraction(half, 129_024) == Fraction(1, 2)


@pytest.mark.parametrize("block, k, exact, rounded", [
    (lambda c: StackedConv(c, c, 5, bias=False), 5, Fraction(18, 25), 0.72),
    (lambda c: StackedConv(c, c, 7, bias=False), 7, Fraction(27, 49), 0.55),
    (lambda c: AsymmetricConv(c, c, 7, bias=False), 7, Fraction(14, 49), 0.29),
])
def test_factorised_kernel_ratios(block, k, exact, rounded):
    c = 64
    full = params(nn.Conv2d(c, c, k, padding=k // 2, bias=False), (c, 16, 16))
    fact = params(block(c), (c, 16, 16))
    assert Fraction(fact, full) == exact
    assert round(fact / full, 2) == rounded


@pytest.mark.parametrize("m", [1, 7, 100, 1024])
def test_fire_example(m):
    fire = params(Fire(m, 3, 4, 4, bias=False), (m, 8, 8))
    plain = params(nn.Conv2d(m, 7, 3, padding=1, bias=False), (m, 8, 8))
    assert plain == 63 * m and fire == 3 * m + 120
    assert Fraction(fire, plain) == Fraction(m + 40, 21 * m)


def test_squeezenet_parameter_counts():
    assert profile_named("squeezenet1_0").total_params == 1_248_424
    assert profile_named("squeezenet1_1").total_params == 1_235_496


# MobileNet paper, tables 6 and 7: (alpha, resolution) -> (million mult-adds, million params).
MOBILENET = [(1.0, 224, 569, 4.2), (0.75, 224, 325, 2.6), (0.5, 224, 149, 1.3), (0.25, 224, 41, 0.5),
             (1.0, 192, 418, 4.2), (1.0, 160, 290, 4.2), (1.0, 128, 186, 4.2)]


@pytest.mark.parametrize("alpha, res, macs_m, params_m", MOBILENET)
def test_mobilenet_published_counts(alpha, res, macs_m, params_m):
    prof = profile_named("mobilenet_v1", width=alpha, resolution=res)
    assert abs(prof.total_macs / 1e6 - macs_m) < 1  # the paper rounds some, truncates others
    assert round(prof.total_params / 1e6, 1) == params_m
    assert prof.input_shape == (3, res, res)


def test_mobilenet_224_within_one_percent():
    prof = profile_named("mobilenet_v1")
    assert abs(prof.total_params / 4.2e6 - 1) < 0.01
    assert abs(prof.total_macs / 569e6 - 1) < 0.01


def test_vgg16_is_138m_and_30x_mobilenet():
    vgg = profile_named("vgg16").total_params
    assert vgg == 138_357_544
    assert round(vgg / profile_named("mobilenet_v1").total_params) in (32, 33)  # "about 1/30"


def test_user_module_and_per_layer_rows():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    prof = profile_model(net, (1, 28, 28))
    rows = {r.name: r for r in prof.layers}
    assert rows["0"].params == 40 and rows["0"].macs == 9 * 4 * 26 * 26
    assert rows["3"].params == 4 * 26 * 26 * 10 + 10 and rows["3"].macs == 4 * 26 * 26 * 10
    assert rows["3"].bytes == rows["3"].params * 4
    d = prof.as_dict()
    assert d["total_params"] == sum(r.params for r in prof.layers) and d["total_macs"] == prof.total_macs
    assert "total" in format_profile(prof)


def test_depthwise_macs():
    prof = profile_model(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), (8, 10, 10))
    assert prof.total_macs == 9 * 8 * 100


@pytest.mark.parametrize("kw, word", [
    (dict(width=0.0), "alpha must be > 0"),
    (dict(width=-0.5), "-0.5"),
    (dict(width=0.001), "rounds"),
    (dict(resolution=100), "100"),
    (dict(resolution=0), "0"),
])
def test_mobilenet_bad_config(kw, word):
    with pytest.raises(ConfigError, match=word):
        profile_named("mobilenet_v1", **kw)


def test_input_too_small_is_config_error():
    with pytest.raises(ConfigError, match="cannot run at input 1x8x8"):
        profile_named("lenet5", (1, 8, 8))
