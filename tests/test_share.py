import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nnshrink.data import Dataset
from nnshrink.errors import ConfigError
from nnshrink.quantize.share import (
    CODEBOOK, INDEX, _Gather, centroid_grad, export_shared, finetune, finetune_filter, is_shared,
    relative_index_entries, share_weights, strip)
from nnshrink.train import TrainConfig


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        x = F.relu(self.conv(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def net(seed=0):
    torch.manual_seed(seed)
    return Net()


def tiny_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return Dataset("tiny", x, y, x[:16], y[:16])


def test_eq3_hand_example():
    # codebook [a, b] = [0.5, -1]; 2x2 index [[0, 1], [1, 0]]; loss = sum(W * G)
    table = torch.tensor([0.5, -1.0], requires_grad=True)
    index = torch.tensor([[0, 1], [1, 0]])
    G = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    W = _Gather.apply(table, index)
    assert W.tolist() == [[0.5, -1.0], [-1.0, 0.5]]
    (W * G).sum().backward()
    assert table.grad.tolist() == [1.0 + 4.0, 2.0 + 3.0]  # sum of the gradients sharing each centroid
    assert centroid_grad(G, index, 2).tolist() == [5.0, 5.0]


def test_eq3_against_autograd_on_expanded_weights():
    m = net()
    share_weights(m, 3)
    x = torch.rand(5, 1, 8, 8)
    m(x).pow(2).sum().backward()
    # oracle: the same forward with plain leaf weights, then sum their grads per cluster
    ref = net()
    with torch.no_grad():
        for name in ("conv", "fc1", "fc2"):
            getattr(ref, name).weight.copy_(getattr(m, name).weight)
            getattr(ref, name).bias.copy_(getattr(m, name).bias)
    ref(x).pow(2).sum().backward()
    for name in ("conv", "fc1", "fc2"):
        mod = getattr(m, name)
        k = mod.weight_codebook.numel()
        want = centroid_grad(getattr(ref, name).weight.grad, mod.weight_index, k)
        torch.testing.assert_close(mod.weight_codebook.grad, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mod.bias.grad, getattr(ref, name).bias.grad)
        # and plain autograd through torch indexing agrees too
        cb = mod.weight_codebook.detach().clone().requires_grad_(True)
        w = torch.cat([cb, cb.new_zeros(1)])[mod.weight_index]
        (w * getattr(ref, name).weight.grad).sum().backward()
        torch.testing.assert_close(cb.grad, want, rtol=1e-5, atol=1e-6)


def test_state_dict_clean_and_roundtrip(tmp_path):
    from nnshrink.checkpoint import load_tensors
    from safetensors.torch import save_file

    m = net()
    plain_keys = list(m.state_dict())
    share_weights(m, {"fc": 2, "conv": 3})
    assert list(m.state_dict()) == plain_keys
    x = torch.rand(3, 1, 8, 8)
    y = m(x)
    save_file(m.state_dict(), str(tmp_path / "m.safetensors"))
    fresh = net(seed=1)
    fresh.load_state_dict(load_tensors(tmp_path / "m.safetensors"))
    torch.testing.assert_close(fresh(x), y)
    # loading a plain state into a shared model re-fits each centroid as its cluster's mean
    other = copy.deepcopy(m)
    with torch.no_grad():
        for mod in (other.conv, other.fc1, other.fc2):
            mod.weight_codebook.add_(1.0)
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other(x), y)
    torch.testing.assert_close(other.fc1.weight_codebook, m.fc1.weight_codebook)


def test_strip_identical_outputs_and_plain_class():
    m = net()
    share_weights(m, 4, init="density")
    x = torch.rand(3, 1, 8, 8)
    y = m(x)
    strip(m)
    assert not any(is_shared(mod) for mod in m.modules())
    assert type(m.fc1) is nn.Linear and m.fc1.weight.requires_grad
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in net().named_parameters()]
    assert not hasattr(m.fc1, INDEX) and not hasattr(m.fc1, CODEBOOK)
    assert torch.equal(m(x), y)
    assert len(torch.unique(m.fc1.weight)) <= 16


def test_pruned_weights_stay_zero_and_own_no_index():
    m = net()
    with torch.no_grad():
        m.fc1.weight[:, ::2] = 0.0  # pruned by value (no mask buffer)
        mask = torch.rand(m.conv.weight.shape) > 0.5
        m.conv.weight.mul_(mask)
        m.conv.register_buffer("weight_mask", mask, persistent=False)  # the pruning stage's buffer
        m.conv.weight[mask] = m.conv.weight[mask] + (m.conv.weight[mask] == 0).float()  # kept != 0
    rows = {r.name: r for r in share_weights(m, 2)}
    assert rows["fc1.weight"].kept == m.fc1.weight.numel() // 2
    assert rows["conv.weight"].kept == int(mask.sum())
    finetune(m, tiny_data(), TrainConfig(epochs=1, lr=0.5, batch_size=16, weight_decay=0.0),
             progress=False, eval_each_epoch=False)
    assert torch.all(m.fc1.weight[:, ::2] == 0)
    assert torch.all(m.conv.weight[~mask] == 0)
    ex = export_shared(m)
    assert ex["fc1.weight"].mask is not None and ex["fc1.weight"].indices.size == rows["fc1.weight"].kept
    assert ex["fc2.weight"].mask is None
    for key, t in ex.items():
        mod = dict(m.named_modules())[key[:-len(".weight")]]
        np.testing.assert_array_equal(t.to_dense(), mod.weight.detach().numpy())
        assert t.indices.dtype == np.uint8 and t.indices.max() < len(t.codebook) <= 2 ** t.bits
        assert t.bits == 2


def test_finetune_trains_only_codebooks_and_biases():
    m = net()
    share_weights(m, 3, targets=["fc"])  # conv stays float (and frozen)
    conv_w = m.conv.weight.detach().clone()
    cb = m.fc1.weight_codebook.detach().clone()
    keep = finetune_filter(m)
    assert not keep("conv.weight", m.conv.weight) and keep("conv.bias", m.conv.bias)
    finetune(m, tiny_data(), TrainConfig(epochs=2, lr=0.5, batch_size=16), progress=False,
             eval_each_epoch=False)
    assert torch.equal(m.conv.weight, conv_w)
    assert not torch.equal(m.fc1.weight_codebook, cb)
    assert len(torch.unique(m.fc1.weight)) <= 8
    # the stored weight copy (what state_dict saves) follows the trained codebook
    torch.testing.assert_close(m.state_dict()["fc1.weight"], m.fc1.weight)


def test_bits_resolution_and_report():
    m = net()
    rows = {r.name: r for r in share_weights(m, {"fc2": 1, "fc": 3})}
    assert rows["conv.weight"].bits == 8 and rows["fc1.weight"].bits == 3 and rows["fc2.weight"].bits == 1
    r = rows["fc1.weight"]
    assert r.k_used == 8 and r.index_bits == 0
    assert r.storage_bits == r.params * 3 + r.k_used * 32
    assert rows["conv.weight"].k_used <= 36  # fewer weights than 2^8: one centroid per value
    assert rows["conv.weight"].inertia == 0.0
    d = r.as_dict()
    assert d["storage_bits"] == r.storage_bits and d["shape"] == [16, 144]


def test_resharing_reclusters():
    m = net()
    share_weights(m, 4)
    rows = share_weights(m, 2)
    assert all(r.k_used <= 4 for r in rows)
    assert list(m.state_dict()) == list(net().state_dict())


def test_relative_index_entries():
    mask = np.zeros(40, bool)
    mask[[0, 3, 20, 39]] = True  # gaps 1, 3, 17, 19 with 3-bit index (max gap 8)
    assert relative_index_entries(mask, 3) == 1 + 1 + 3 + 3
    assert relative_index_entries(None, 3) == 0


@pytest.mark.parametrize("bits", [0, 9, -1, 2.5, True, "4"])
def test_bad_bits(bits):
    with pytest.raises(ConfigError, match="bits must be an integer in 1..8"):
        share_weights(net(), bits)
    with pytest.raises(ConfigError, match="bits must be"):
        share_weights(net(), {"fc": bits})


def test_bad_patterns_init_and_values():
    with pytest.raises(ConfigError, match="matches no"):
        share_weights(net(), {"nope*": 3})
    with pytest.raises(ConfigError, match="matches no"):
        share_weights(net(), 3, targets=["nope"])
    with pytest.raises(ConfigError, match="unknown init"):
        share_weights(net(), 3, init="kmeans++")
    m = net()
    with torch.no_grad():
        m.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="'fc1.weight' has NaN or inf"):
        share_weights(m, 3)
    m = net()
    with torch.no_grad():
        m.fc2.weight.zero_()
    with pytest.raises(ConfigError, match="'fc2.weight' has no surviving"):
        share_weights(m, 3)
    with pytest.raises(ConfigError, match="Sequential has no compressible tensor"):
        share_weights(nn.Sequential(nn.ReLU()), 3)


def test_deepcopy_and_module_type():
    m = net()
    share_weights(m, 2)
    c = copy.deepcopy(m)
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(c(x), m(x))
    assert isinstance(m.fc1, nn.Linear) and isinstance(m.conv, nn.Conv2d)
