"""Compressed models (pruned, shared, pruned + shared; with BatchNorm and attention)
survive what users do with models: deepcopy, torch.save / torch.load of the whole module,
state_dict round trips, .to(device / dtype), torch.compile; and ``export_encodings``
writes an archive that loads back into a fresh model with identical outputs."""

import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn

from nnshrink.encodings import export_encodings
from nnshrink.format import read_archive, write_archive
from nnshrink.prune import current_masks, prune_model
from nnshrink.quantize.binary import BinaryConv2d, BinaryLinear
from nnshrink.quantize.share import is_shared, share_weights
from test_own_loop import Net, batch, make, steps

CASES = ["pruned", "shared", "pruned+shared"]


def compressed(case: str) -> Net:
    m = make()
    steps(m, torch.optim.SGD(m.parameters(), lr=0.05), 3)  # BatchNorm statistics that are not the defaults
    if "pruned" in case:
        prune_model(m, 0.5)
    if "shared" in case:
        share_weights(m, 3)
    return m.eval()


def same_compression(a: nn.Module, b: nn.Module) -> None:
    """``b`` carries the masks and codebooks of ``a`` (not only its values)."""
    ma, mb = current_masks(a), current_masks(b)
    assert list(ma) == list(mb) and all(torch.equal(ma[n], mb[n].to(ma[n].device)) for n in ma)
    assert [type(m).__name__ for m in a.modules()] == [type(m).__name__ for m in b.modules()]


def still_compressed_after_training(m: nn.Module, case: str) -> None:
    inner = getattr(m, "_orig_mod", m)  # what torch.compile wraps
    masks = current_masks(inner)
    m.train()
    steps(m, torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9, weight_decay=0.1), 4)
    state = inner.state_dict()
    for name, mask in masks.items():
        assert torch.all(state[name][~mask] == 0), name
    if "shared" in case:
        assert len(torch.unique(state["attn.in_proj_weight"])) <= 9
        assert len(torch.unique(state["emb.weight"])) <= 9


@pytest.mark.parametrize("case", CASES)
def test_deepcopy(case):
    m = compressed(case)
    x, _ = batch()
    c = copy.deepcopy(m)
    assert torch.equal(c(x), m(x))
    same_compression(m, c)
    still_compressed_after_training(c, case)


@pytest.mark.parametrize("case", CASES)
def test_torch_save_whole_module(case, tmp_path):
    m = compressed(case)
    x, _ = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "hook will not be serialized" warnings either
        torch.save(m, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert torch.equal(loaded(x), m(x))
    same_compression(m, loaded)
    still_compressed_after_training(loaded, case)


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trip(case):
    m = compressed(case)
    x, _ = batch()
    state = m.state_dict()
    assert list(state) == list(Net().state_dict())  # the user's own keys, nothing added
    plain = make(seed=5)
    plain.load_state_dict(state, strict=True)
    assert torch.equal(plain.eval()(x), m(x))
    other = compressed(case)  # a compressed model takes a plain state too
    other.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(other(x), m(x))


@pytest.mark.parametrize("case", CASES)
def test_to_meta_and_dtype(case):
    m = compressed(case)
    x, _ = batch()
    meta = copy.deepcopy(m).to("meta")
    assert meta(x.to("meta")).shape == (32, 4) and meta.fc.weight.device.type == "meta"
    assert {n: v.shape for n, v in current_masks(meta).items()} == {n: v.shape for n, v in current_masks(m).items()}
    assert [type(a) for a in meta.modules()] == [type(b) for b in m.modules()]
    wide = copy.deepcopy(m).to(torch.float64)
    assert wide.fc.weight.dtype == torch.float64
    torch.testing.assert_close(wide(x).float(), m(x), rtol=1e-5, atol=1e-5)
    still_compressed_after_training(wide, case)


@pytest.mark.parametrize("case", CASES)
def test_torch_compile_aot_eager(case):
    """Dynamo capture of the masked / shared model (aot_eager: no C++ toolchain needed;
    the inductor backend is exercised by the slow test below)."""
    m = compressed(case)
    x, _ = batch()
    ref = m(x)
    cm = torch.compile(copy.deepcopy(m), backend="aot_eager")
    torch.testing.assert_close(cm(x), ref)
    still_compressed_after_training(cm, case)  # a compiled COPY: its masks must be found too


@pytest.mark.slow
def test_torch_compile_inductor_and_train():
    m = compressed("pruned+shared")
    x, _ = batch()
    ref = m(x)
    cm = torch.compile(copy.deepcopy(m))
    torch.testing.assert_close(cm(x), ref)
    still_compressed_after_training(cm, "pruned+shared")


class BinNet(nn.Module):
    """Binary conv + BatchNorm + a float Linear that is pruned and shared."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bconv = BinaryConv2d(4, 4, 3, mode="xnor")
        self.bn = nn.BatchNorm2d(4)
        self.bfc = BinaryLinear(4 * 4 * 4, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = self.bn(self.bconv(torch.relu(self.conv(x))))
        return self.fc(torch.relu(self.bfc(h.flatten(1))))


@pytest.mark.parametrize("case", CASES)
def test_export_encodings_archive_loads_into_fresh_model(case, tmp_path):
    m = compressed(case)
    tensors = export_encodings(m)
    assert list(tensors) == list(m.state_dict())
    kinds = {n: type(t).__name__ for n, t in tensors.items()}
    want = "SharedTensor" if "shared" in case else "SparseTensor"
    for name in ("emb.weight", "attn.in_proj_weight", "attn.out_proj.weight", "conv.weight", "fc.weight"):
        assert kinds[name] == want, name
    assert kinds["bn.running_mean"] == kinds["conv.bias"] == "DenseTensor"
    assert tensors["bn.num_batches_tracked"].array.dtype.name == "int64"  # its own dtype
    if case == "pruned+shared":
        assert tensors["fc.weight"].mask is not None  # the pruning mask is kept
    write_archive(tmp_path / "m.nsk", tensors, {"model": None})
    fresh = make(seed=9)
    fresh.load_state_dict(read_archive(tmp_path / "m.nsk").dense_state(), strict=True)
    x, _ = batch()
    assert torch.equal(fresh.eval()(x), m(x))
    assert bool(current_masks(m)) == ("pruned" in case) and is_shared(m.attn) == ("shared" in case)  # untouched


def test_export_encodings_binary_layers(tmp_path):
    torch.manual_seed(0)
    m = BinNet()
    prune_model(m, 0.5, include=["fc"])
    share_weights(m, 2, targets=["fc"])
    m.eval()
    tensors = export_encodings(m)
    assert {n: type(t).__name__ for n, t in tensors.items() if n.endswith("weight")} == {
        "conv.weight": "DenseTensor", "bconv.weight": "BinaryTensor", "bn.weight": "DenseTensor",
        "bfc.weight": "BinaryTensor", "fc.weight": "SharedTensor"}
    write_archive(tmp_path / "b.nsk", tensors, {"model": None})
    fresh = BinNet()
    fresh.load_state_dict(read_archive(tmp_path / "b.nsk").dense_state(), strict=True)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), m(x))


def test_torch_save_to_bytes_of_a_pruned_submodule():
    """A masked module saved on its own (no pruned parent around it) keeps its mask live."""
    m = compressed("pruned")
    buf = io.BytesIO()
    torch.save(m.fc, buf)
    buf.seek(0)
    fc = torch.load(buf, weights_only=False)
    mask = fc.weight_mask.clone()
    opt = torch.optim.SGD(fc.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        fc(torch.randn(5, 48)).pow(2).sum().backward()
        opt.step()
    assert torch.all(fc.weight[~mask] == 0)
