import pytest
import torch

from nnshrink.errors import ConfigError
from nnshrink.models import build_model, model_names, resolve_config


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_lenet_parameter_counts_exact():
    assert n_params(build_model("lenet300")) == 266_610
    assert n_params(build_model("lenet5")) == 431_080


def test_lenet_layer_names_follow_the_paper():
    assert [k for k in build_model("lenet300").state_dict()] == [
        "ip1.weight", "ip1.bias", "ip2.weight", "ip2.bias", "ip3.weight", "ip3.bias"]
    assert {k.split(".")[0] for k in build_model("lenet5").state_dict()} == {"conv1", "conv2", "ip1", "ip2"}


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_forward_shape(name):
    assert build_model(name)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_registry_lists_names_and_rejects_unknown():
    assert {"lenet300", "lenet5"} <= set(model_names())
    with pytest.raises(ConfigError, match="lenet300"):
        build_model("resnet9000")


def test_unknown_config_key():
    with pytest.raises(ConfigError, match="widht"):
        resolve_config("lenet5", widht=2)
