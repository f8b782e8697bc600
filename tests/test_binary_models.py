"""Binary model zoo: shapes, names, block orders, training, packed inference, storage."""

import numpy as np
import pytest
import torch

from nnshrink.data import Dataset
from nnshrink.errors import ConfigError
from nnshrink.models import build_model, model_names
from nnshrink.models.binary import BinaryLeNet5
from nnshrink.quantize.binary import BinaryConv2d, BinaryLinear, clip_binary_weights, export_binary
from nnshrink.runtime.binary_infer import PackedXnorConv2d, PackedXnorLinear, pack_model
from nnshrink.train import TrainConfig, default_train_config, evaluate, fit

VARIANTS = [("lenet5-bwn", {}), ("lenet5-xnor", {}), ("lenet5-xnor", {"scale_input": False}),
            ("lenet5-xnor", {"order": "usual"}), ("vgg-small-bwn", {"width": 8}),
            ("vgg-small-xnor", {"width": 8}), ("vgg-small-xnor", {"width": 8, "order": "usual"})]


def test_registered_with_train_defaults():
    for name in ("lenet5-bwn", "lenet5-xnor", "vgg-small-bwn", "vgg-small-xnor"):
        assert name in model_names()
        assert default_train_config(name).optimizer == "adam"


@pytest.mark.parametrize("name,over", VARIANTS)
def test_forward_shapes_first_last_float(name, over):
    m = build_model(name, **over)
    assert m(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    layers = [mod for mod in m.modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))]
    assert not isinstance(layers[0], (BinaryConv2d, BinaryLinear))
    assert not isinstance(layers[-1], (BinaryConv2d, BinaryLinear))
    assert all(isinstance(x, (BinaryConv2d, BinaryLinear)) for x in layers[1:-1])
    mode = "xnor" if "xnor" in name else "bwn"
    assert all(x.mode == mode for x in layers[1:-1])


def test_lenet_names_match_float_twin():
    keys = set(build_model("lenet5-xnor").state_dict())
    assert {"conv1.weight", "conv2.weight", "ip1.weight", "ip2.weight"} <= keys
    assert not any("orig" in k or "parametrizations" in k for k in keys)


def test_block_order_and_bad_options():
    xo, us = build_model("lenet5-xnor"), build_model("lenet5-xnor", order="usual")
    assert xo.bn2.num_features == 20  # BN before the binary conv (its input channels)
    assert us.bn2.num_features == 50  # BN after it
    assert not build_model("lenet5-xnor", scale_input=False).conv2.scale_input
    with pytest.raises(ConfigError, match="order"):
        build_model("lenet5-xnor", order="sideways")
    with pytest.raises(ConfigError):
        build_model("lenet5-bwn", order="usual")  # bwn has no order option
    with pytest.raises(ConfigError, match="mode"):
        BinaryLeNet5("ternary")


@pytest.mark.parametrize("name,over", VARIANTS)
def test_packed_inference_matches_model(name, over):
    torch.manual_seed(0)
    m = build_model(name, **over)
    m.train()
    m(torch.randn(32, 1, 28, 28))  # give BatchNorm non-trivial running stats
    m.eval()
    x = torch.randn(6, 1, 28, 28)
    packed = pack_model(m)
    if "xnor" in name:
        assert any(isinstance(x, (PackedXnorConv2d, PackedXnorLinear)) for x in packed.modules())
    with torch.no_grad():
        torch.testing.assert_close(packed(x), m(x), rtol=1e-4, atol=1e-4)


def _tiny(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.rand(n, 1, 28, 28, generator=g) * 0.3
    for i in range(n):  # a class-dependent bright square, learnable in a few steps
        r = int(y[i]) * 2
        x[i, 0, r:r + 6, 4:24] += 0.7
    return Dataset("tiny", x[: n - 64], y[: n - 64], x[n - 64:], y[n - 64:])


@pytest.mark.parametrize("name", ["lenet5-bwn", "lenet5-xnor"])
def test_few_steps_lower_the_loss_and_clip(name):
    data = _tiny(n=160)
    torch.manual_seed(0)
    m = build_model(name)
    cfg = TrainConfig(epochs=1, lr=5e-3, optimizer="adam", weight_decay=0.0, batch_size=48, max_steps=2)
    first = fit(m, data, cfg, after_step=[clip_binary_weights], progress=False, eval_each_epoch=False)
    later = fit(m, data, cfg.replace(max_steps=6, seed=1), after_step=[clip_binary_weights], progress=False,
                eval_each_epoch=False)
    assert later.epochs[-1]["loss"] < first.epochs[0]["loss"]
    assert all(mod.weight.abs().max() <= 1 for mod in m.modules() if isinstance(mod, (BinaryConv2d, BinaryLinear)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lenet5-bwn", "lenet5-xnor"])
def test_trains_on_tiny_data_and_clips(name):
    data = _tiny(n=224)
    m = build_model(name)
    cfg = TrainConfig(epochs=4, lr=5e-3, optimizer="adam", weight_decay=0.0, batch_size=32)
    fit(m, data, cfg, after_step=[clip_binary_weights], progress=False, eval_each_epoch=False)
    assert evaluate(m, data) > 0.5
    assert all(mod.weight.abs().max() <= 1 for mod in m.modules() if isinstance(mod, (BinaryConv2d, BinaryLinear)))


def test_archive_storage_of_binary_layers(tmp_path):
    format_mod = pytest.importorskip("nnshrink.format")
    m = build_model("lenet5-xnor")
    tensors = export_binary(m)
    path = tmp_path / "b.nsk"
    format_mod.write_archive(path, tensors, {"model": "lenet5-xnor"})
    arch = format_mod.read_archive(path)
    float_bytes = sum(4 * t.signs.size for t in tensors.values())
    rec_bytes = sum(r["bytes"] for r in arch.records)
    assert float_bytes / rec_bytes > 30  # 1 bit per weight + a float32 scale per channel
    for name, t in tensors.items():
        np.testing.assert_array_equal(arch.tensors[name].to_dense(), t.to_dense())
