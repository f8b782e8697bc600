"""SparseLinear / CodebookLinear / accelerate, with torch.nn.functional.linear as the oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nnshrink.compressed import DenseTensor, SharedTensor, SparseTensor
from nnshrink.errors import ConfigError
from nnshrink.runtime.layers import CodebookLinear, SparseLinear
from nnshrink.runtime.conv import KernelConv2d
from nnshrink.runtime.swap import accelerate

SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]
TOL = dict(rtol=1e-4, atol=1e-4)


def pruned_linear(seed, sparsity, bias=True):
    g = torch.Generator().manual_seed(seed)
    out_f, in_f = (int(v) for v in torch.randint(1, 100, (2,), generator=g))
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight[torch.rand(lin.weight.shape, generator=g) < sparsity] = 0
        if sparsity == 1.0:
            lin.weight.zero_()
    return lin


def to_shared(w: np.ndarray, k: int, sparse: bool, seed: int = 0) -> SharedTensor:
    rng = np.random.default_rng(seed)
    cb = np.sort(rng.standard_normal(k)).astype(np.float32)
    mask = (w != 0) if sparse else None
    n = int(mask.sum()) if sparse else w.size
    return SharedTensor(w.shape, cb, rng.integers(0, k, n).astype(np.uint8), max(1, int(np.log2(k))), mask)


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("batch", [(), (1,), (9,), (2, 3)])
def test_sparse_linear_from_dense(sparsity, batch):
    lin = pruned_linear(int(sparsity * 1000) + len(batch), sparsity)
    layer = SparseLinear.from_dense(lin)
    x = torch.randn(*batch, lin.in_features)
    with torch.no_grad():
        np.testing.assert_allclose(layer(x), F.linear(x, lin.weight, lin.bias), **TOL)
    assert layer(x).shape == (*batch, lin.out_features)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_sparse_linear_from_compressed(sparsity):
    lin = pruned_linear(7, sparsity, bias=False)
    w = lin.weight.detach().numpy()
    t = SparseTensor(w.shape, w != 0, w[w != 0])
    layer = SparseLinear.from_compressed(t)
    x = torch.randn(4, lin.in_features)
    np.testing.assert_allclose(layer(x), F.linear(x, torch.from_numpy(t.to_dense())), **TOL)
    np.testing.assert_array_equal(layer.dense_weight().numpy(), t.to_dense())


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("batch", [1, 16])
def test_codebook_linear_from_shared(sparsity, sparse, batch):
    lin = pruned_linear(11 + int(sparsity * 100), sparsity)
    t = to_shared(lin.weight.detach().numpy(), 16, sparse=True)
    bias = lin.bias.detach()
    ref_w = torch.from_numpy(t.to_dense())
    x = torch.randn(batch, lin.in_features)
    layer = CodebookLinear.from_compressed(t, bias, sparse=sparse)
    assert layer.sparse == sparse
    np.testing.assert_allclose(layer(x), F.linear(x, ref_w, bias), **TOL)
    # SparseLinear accepts a SharedTensor too (centroids expanded to float)
    np.testing.assert_allclose(SparseLinear.from_compressed(t, bias)(x), F.linear(x, ref_w, bias), **TOL)


def test_codebook_linear_unpruned_and_from_dense():
    lin = nn.Linear(33, 21)
    t = to_shared(lin.weight.detach().numpy(), 8, sparse=False)
    layer = CodebookLinear.from_compressed(t, lin.bias)
    assert not layer.sparse
    x = torch.randn(5, 33)
    np.testing.assert_allclose(layer(x), F.linear(x, torch.from_numpy(t.to_dense()), lin.bias).detach(), **TOL)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(t.to_dense()))
        lin.weight[:, ::3] = 0
    cb = np.append(t.codebook, 0)
    for sparse in (True, False):
        layer = CodebookLinear.from_dense(lin, cb, sparse=sparse)
        np.testing.assert_allclose(layer(x), F.linear(x, lin.weight, lin.bias).detach(), **TOL)


def test_bad_inputs_raise_config_errors():
    lin = pruned_linear(1, 0.5)
    layer = SparseLinear.from_dense(lin)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # torch's own error
        layer(torch.randn(2, lin.in_features + 1))
    x = torch.randn(3, 2, lin.in_features - 1)
    with pytest.raises(RuntimeError) as torchs:
        F.linear(x, lin.weight)
    with pytest.raises(RuntimeError) as ours:
        layer(x)
    assert str(ours.value) == str(torchs.value)
    with pytest.raises(ConfigError, match="SharedTensor"):
        CodebookLinear.from_compressed(DenseTensor(np.zeros((2, 2), np.float32)))
    with pytest.raises(ConfigError, match="2-D"):
        SparseLinear.from_compressed(SparseTensor((2, 2, 2), np.ones((2, 2, 2), bool), np.ones(8, np.float32)))
    bad = SharedTensor((2, 2), np.zeros(2, np.float32), np.array([0, 1, 2, 0], np.uint8), 2)
    with pytest.raises(ConfigError, match="out of range"):
        CodebookLinear.from_compressed(bad)
    with pytest.raises(ConfigError, match="bias"):
        SparseLinear.from_dense(lin).__class__.from_compressed(
            SparseTensor((2, 2), np.ones((2, 2), bool), np.ones(4, np.float32)), torch.zeros(3))
    with pytest.raises(ConfigError, match="codebook values"):
        CodebookLinear.from_dense(nn.Linear(4, 4), np.array([0.0, 1.0]))


def test_float64_input_keeps_dtype():
    lin = pruned_linear(5, 0.9)
    x = torch.randn(3, lin.in_features, dtype=torch.float64)
    y = SparseLinear.from_dense(lin)(x)
    assert y.dtype == torch.float64
    np.testing.assert_allclose(y, F.linear(x.float(), lin.weight, lin.bias).detach().double(), **TOL)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.body = nn.Sequential(nn.Linear(18, 12), nn.ReLU(), nn.Linear(12, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(self.conv(x).flatten(1))))


def test_accelerate_swaps_only_sparse_and_shared_layers():
    torch.manual_seed(0)
    net = Net().eval()
    w0 = net.body[0].weight.detach().numpy().copy()
    w0[np.abs(w0) < 0.1] = 0
    w2 = net.body[2].weight.detach().numpy()
    tensors = {
        "body.0.weight": SparseTensor(w0.shape, w0 != 0, w0[w0 != 0]),
        "body.2.weight": to_shared(w2, 4, sparse=False),
        "head.weight": DenseTensor(net.head.weight.detach().numpy()),
        "conv.weight": SparseTensor((2, 1, 3, 3), np.ones((2, 1, 3, 3), bool), np.ones(18, np.float32)),
    }
    fast = accelerate(net, tensors)
    assert isinstance(fast.body[0], SparseLinear) and isinstance(fast.body[2], CodebookLinear)
    assert isinstance(fast.head, nn.Linear) and isinstance(fast.conv, KernelConv2d)
    assert fast.nnshrink_runtime == {"conv": "sparse", "body.0": "sparse", "body.2": "codebook"}
    assert isinstance(net.body[0], nn.Linear)  # not in place by default
    auto = accelerate(net, tensors, runtime="auto")  # small fc layers: torch keeps them
    assert isinstance(auto.body[0], nn.Linear) and isinstance(auto.body[2], nn.Linear)
    assert isinstance(auto.conv, KernelConv2d)  # 9 kept weights per channel: torch's conv is slower there
    with torch.no_grad():
        net.conv.weight.fill_(1)
        net.body[0].weight.copy_(torch.from_numpy(w0))
        net.body[2].weight.copy_(torch.from_numpy(tensors["body.2.weight"].to_dense()))
        x = torch.randn(4, 1, 5, 5)
        np.testing.assert_allclose(fast(x), net(x), **TOL)
    bad = {"head.weight": SparseTensor((3, 9), np.ones((3, 9), bool), np.ones(27, np.float32))}
    with pytest.raises(ConfigError, match="does not match"):
        accelerate(net, bad)


def test_non_contiguous_and_grad_inputs():
    lin = pruned_linear(9, 0.9)
    layer = SparseLinear.from_dense(lin)
    x = torch.randn(lin.in_features, 6).T  # (6, in), not contiguous
    np.testing.assert_allclose(layer(x), F.linear(x, lin.weight, lin.bias).detach(), **TOL)
    np.testing.assert_allclose(layer(x[:1]), F.linear(x[:1], lin.weight, lin.bias).detach(), **TOL)
    xg = torch.randn(2, lin.in_features, requires_grad=True)
    np.testing.assert_allclose(layer(xg), F.linear(xg, lin.weight, lin.bias).detach(), **TOL)
    assert layer(torch.randn(0, lin.in_features)).shape == (0, lin.out_features)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_sparse_linear_batched_path(sparsity):
    lin = pruned_linear(21, sparsity)
    layer = SparseLinear.from_dense(lin)
    x = torch.randn(12, lin.in_features)
    np.testing.assert_allclose(layer(x), F.linear(x, lin.weight, lin.bias).detach(), **TOL)


def test_accelerate_leaves_linear_subclasses_alone():
    class Scaled(nn.Linear):  # e.g. a binary layer: same weight name, different forward
        def forward(self, x):
            return 2 * super().forward(x)

    net = nn.Sequential(Scaled(6, 4), nn.Linear(4, 3))
    tensors = {k: SparseTensor((o, i), np.ones((o, i), bool), np.ones(o * i, np.float32))
               for k, (o, i) in {"0.weight": (4, 6), "1.weight": (3, 4)}.items()}
    with pytest.raises(ConfigError, match="layer '0' has no compressed kernel: no compressed kernel for Scaled"):
        accelerate(net, tensors)
    fast = accelerate(net, tensors, runtime="auto")  # auto falls back where there is no kernel
    assert type(fast[0]) is Scaled and fast.nnshrink_runtime["0"].startswith("dense (no compressed kernel")


def test_accelerate_keeps_transformer_fast_path_working():
    """nn.TransformerEncoderLayer's eval fast path reads linear1.weight / linear2.weight
    directly: accelerate must leave the Linear layers such modules read in place."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True).eval()
    net = torch.nn.Sequential(layer, torch.nn.Linear(16, 4)).eval()
    tensors = {}
    for name, p in net.state_dict().items():
        if name.endswith("weight") and p.dim() == 2:
            w = p.numpy().copy()
            mask = np.abs(w) > np.quantile(np.abs(w), 0.7)
            tensors[name] = SparseTensor(w.shape, mask, w[mask])
    fast = accelerate(net, tensors)
    assert isinstance(fast[1], SparseLinear)  # the plain head is still swapped
    assert type(fast[0].linear1) is torch.nn.Linear
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        out = fast(x)
    assert out.shape == (3, 5, 4)
