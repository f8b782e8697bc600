"""nnshrink.load into the compressed runtime: every layer kind against the dense decode,
the auto rule's fallbacks, resident bytes, and torch's own errors for misfit inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import nnshrink
from nnshrink.compressed import SharedTensor, SparseTensor
from nnshrink.errors import ConfigError
from nnshrink.runtime.conv import KernelConv2d
from nnshrink.runtime.embedding import CodebookEmbedding, codebook_lookup_ref
from nnshrink.runtime.layers import CodebookLinear, SparseLinear
from nnshrink.runtime.swap import accelerate, resident_weight_bytes

TOL = dict(rtol=1e-4, atol=1e-4)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.fc1 = nn.Linear(16 * 6 * 6, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    torch.manual_seed(0)
    res = nnshrink.compress(ConvNet(), progress=False)
    path = tmp_path_factory.mktemp("rt") / "m.nsk"
    res.save(path)
    return path


def test_every_runtime_computes_the_dense_decode(archive):
    dense = nnshrink.load(archive, model=ConvNet(), runtime="dense").eval()
    comp = nnshrink.load(archive, model=ConvNet(), runtime="compressed")
    auto = nnshrink.load(archive, model=ConvNet(), runtime="auto")
    assert isinstance(comp.conv1, KernelConv2d) and isinstance(comp.conv2, KernelConv2d)
    assert isinstance(comp.fc1, (SparseLinear, CodebookLinear)) and isinstance(comp.fc2, (SparseLinear, CodebookLinear))
    assert set(comp.nnshrink_runtime) == {"conv1", "conv2", "fc1", "fc2"}
    assert all(v in ("sparse", "codebook") for v in comp.nnshrink_runtime.values())
    assert set(auto.nnshrink_runtime) == {"conv1", "conv2", "fc1", "fc2"}
    x = torch.randn(5, 1, 14, 14)
    with torch.no_grad():
        want = dense(x)
        np.testing.assert_allclose(comp(x), want, **TOL)
        np.testing.assert_allclose(auto(x), want, **TOL)
        np.testing.assert_allclose(comp(x[:1]), want[:1], **TOL)


def test_resident_bytes_are_the_compressed_size(archive):
    dense = nnshrink.load(archive, model=ConvNet(), runtime="dense")
    comp = nnshrink.load(archive, model=ConvNet(), runtime="compressed")
    float_bytes = sum(p.numel() * 4 for p in ConvNet().parameters())
    assert resident_weight_bytes(dense) == float_bytes
    # pruned to ~10 % and shared: a uint8 code + 16-bit column index per kept weight
    assert resident_weight_bytes(comp) < 0.2 * float_bytes


def test_kernel_conv_matches_torch_and_raises_torchs_errors():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 4, 3, stride=2, padding=(1, 2), dilation=1, groups=2)
    with torch.no_grad():
        conv.weight[torch.rand(conv.weight.shape) < 0.7] = 0
    w = conv.weight.detach().numpy()
    layer = KernelConv2d.from_compressed(SparseTensor(w.shape, w != 0, w[w != 0]), conv)
    for x in (torch.randn(3, 6, 9, 11), torch.randn(6, 7, 7)):  # batched and unbatched
        np.testing.assert_allclose(layer(x), conv(x).detach(), **TOL)
    for bad in (torch.randn(2, 5, 9, 9), torch.randn(9, 9), torch.randn(1, 6, 0, 5)):
        with pytest.raises(RuntimeError) as torchs:
            conv(bad)
        with pytest.raises(RuntimeError) as ours:
            layer(bad)
        assert str(ours.value) == str(torchs.value)


def test_codebook_embedding_matches_reference_and_torch():
    rng = np.random.default_rng(0)
    cb = rng.standard_normal(16).astype(np.float32)
    for mask in (None, rng.random((50, 8)) < 0.3):
        n = 400 if mask is None else int(mask.sum())
        t = SharedTensor((50, 8), cb, rng.integers(0, 16, n).astype(np.uint8), 4, mask)
        emb = nn.Embedding(50, 8)
        layer = CodebookEmbedding(t, emb)
        ids = torch.from_numpy(rng.integers(0, 50, (3, 7)))
        want = F.embedding(ids, torch.from_numpy(t.to_dense()))
        np.testing.assert_array_equal(layer(ids), want)
        np.testing.assert_array_equal(codebook_lookup_ref(layer.codes.numpy(), layer.codebook.numpy(), ids.numpy()),
                                      want)
        assert layer.weight_nbytes() < 50 * 8 * 4 / 3
        with pytest.raises(IndexError, match="index out of range"):  # torch's own error
            layer(torch.tensor([50]))


def test_compressed_names_a_layer_without_kernel_and_auto_falls_back():
    net = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Flatten(), nn.Linear(3 * 6, 4))
    w = net[0].weight.detach().numpy().copy()
    w[:, :, 0] = 0
    tensors = {"0.weight": SparseTensor(w.shape, w != 0, w[w != 0])}
    with pytest.raises(ConfigError, match="layer '0' has no compressed kernel: no compressed kernel for Conv1d"):
        accelerate(net, tensors)
    auto = accelerate(net, tensors, runtime="auto")
    assert isinstance(auto[0], nn.Conv1d) and auto.nnshrink_runtime == {"0": "dense (no compressed kernel for Conv1d)"}
    with pytest.raises(ConfigError, match="runtime must be one of dense, compressed, auto; got 'fast'"):
        accelerate(net, tensors, runtime="fast")


def test_auto_picks_kernels_for_big_sparse_layers_only():
    rng = np.random.default_rng(0)
    net = nn.Sequential(nn.Linear(1000, 400), nn.Linear(400, 10))
    tensors = {}
    for key, (o, i), d in (("0.weight", (400, 1000), 0.08), ("1.weight", (10, 400), 0.08)):
        mask = rng.random((o, i)) < d
        tensors[key] = SharedTensor((o, i), np.linspace(-1, 1, 32, dtype=np.float32),
                                    rng.integers(0, 32, int(mask.sum())).astype(np.uint8), 5, mask)
    auto = accelerate(net, tensors, runtime="auto")
    assert auto.nnshrink_runtime["0"] == "codebook"
    assert auto.nnshrink_runtime["1"].startswith("dense (") and "kept weights" in auto.nnshrink_runtime["1"]
    conv = nn.Sequential(nn.Conv2d(64, 32, 3))
    for d, want in ((0.1, "sparse"), (0.2, "sparse"), (0.3, "dense")):  # 115, then 173 kept per channel
        mask = rng.random((32, 64, 3, 3)) < d
        w = rng.standard_normal(int(mask.sum())).astype(np.float32)
        got = accelerate(conv, {"0.weight": SparseTensor(mask.shape, mask, w)}, runtime="auto").nnshrink_runtime["0"]
        assert got.startswith(want), (d, got)


def test_inspect_shows_the_auto_choice_from_the_header(archive, capsys):
    from nnshrink.cli import main

    assert main(["inspect", str(archive), "--json"]) == 0
    layers = {l["name"]: l for l in __import__("json").loads(capsys.readouterr().out)["layers"]}
    loaded = nnshrink.load(archive, model=ConvNet(), runtime="auto").nnshrink_runtime
    for name in ("conv1", "conv2", "fc1", "fc2"):  # the header alone predicts what load does
        assert layers[f"{name}.weight"]["auto_runtime"] == loaded[name]
    assert layers["fc1.bias"]["auto_runtime"] is None
    assert main(["inspect", str(archive)]) == 0
    assert "runtime auto (4-D weights as Conv2d, 2-D as Linear): conv1.weight " in capsys.readouterr().out


def test_every_archive_the_reader_accepts_runs_in_the_kernels(tmp_path):
    """Mutated archives (the format fuzzer's): whatever the reader accepts, the compressed
    layers built from it compute what torch computes on the decoded weight."""
    from nnshrink.format import FormatError, parse_archive
    from nnshrink.format.fuzz import mutate, sample_archives

    samples = sample_archives(tmp_path)
    rng = np.random.default_rng(5)
    ran = 0
    for i in range(200):
        data = samples[i % len(samples)] if i < len(samples) else mutate(samples[i % len(samples)], samples, rng)
        try:
            archive = parse_archive(data, "fuzz")
        except FormatError:
            continue
        for name, t in archive.tensors.items():
            if not isinstance(t, (SparseTensor, SharedTensor)) or len(t.shape) not in (2, 4):
                continue
            w = torch.from_numpy(t.to_dense())
            if len(t.shape) == 2:
                mod, x = nn.Linear(t.shape[1], t.shape[0], bias=False), torch.randn(3, t.shape[1])
            else:
                mod, x = nn.Conv2d(t.shape[1], t.shape[0], t.shape[2:], bias=False), torch.randn(2, t.shape[1], 7, 7)
            with torch.no_grad():
                mod.weight.copy_(w)
                fast = accelerate(nn.Sequential(mod), {"0.weight": t})
                np.testing.assert_allclose(fast(x), mod(x), rtol=1e-3, atol=1e-3, equal_nan=True)
            ran += 1
    assert ran >= 12  # at least the unmutated samples' layers ran


def test_load_and_swap_agree_on_the_runtime_names():
    from nnshrink import loading
    from nnshrink.runtime import swap

    assert loading.RUNTIMES == swap.RUNTIMES


def test_outlier_layers_stay_dense_under_auto_and_are_refused_by_compressed():
    """A shared weight with dense-and-sparse outliers has no kernel that adds them: auto keeps
    torch (with the decoded weight, outliers included), compressed names the layer."""
    import numpy as np
    import torch.nn as nn

    from nnshrink.compressed import SharedTensor
    from nnshrink.errors import ConfigError
    from nnshrink.runtime.swap import accelerate

    rng = np.random.default_rng(0)
    outl = np.zeros((64, 128), bool)
    outl[3, 5] = True
    t = SharedTensor((64, 128), np.array([-0.1, 0.0, 0.1], np.float32), rng.integers(0, 3, 64 * 128), 2, None,
                     outl, np.array([4.0], np.float16))
    model = nn.Sequential(nn.Linear(128, 64))
    fast = accelerate(model, {"0.weight": t}, runtime="auto")
    assert type(fast[0]) is nn.Linear and "outliers" in fast.nnshrink_runtime["0"]
    with pytest.raises(ConfigError, match="'0' has no compressed kernel: dense-and-sparse outliers"):
        accelerate(model, {"0.weight": t}, runtime="compressed")
