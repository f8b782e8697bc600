"""Archive -> model / tensors, and the inspect / decompress commands that use them."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nnshrink.checkpoint import load_checkpoint
from nnshrink.compressed import DenseTensor, SharedTensor
from nnshrink.errors import CheckpointError
from nnshrink.format import write_archive
from nnshrink.loading import load_model
from nnshrink.models import build_model
from nnshrink.runtime.decode import load_archive_model, load_archive_tensors


def _compress(model, bits=5, keep=0.2):
    """A crude prune + linear-codebook share of every weight matrix (the real stages live elsewhere)."""
    out = {}
    for name, v in model.state_dict().items():
        a = v.numpy()
        if a.ndim >= 2:
            mask = np.abs(a) >= np.quantile(np.abs(a), 1 - keep)
            cb = np.linspace(a.min(), a.max(), 1 << bits).astype(np.float32)
            idx = np.abs(a[mask][:, None] - cb[None]).argmin(1)
            out[name] = SharedTensor(a.shape, cb, idx, bits, mask)
        else:
            out[name] = DenseTensor(a.copy())
    return out


@pytest.fixture
def lenet_archive(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet300")
    tensors = _compress(model)
    path = tmp_path / "m.nsk"
    size = write_archive(path, tensors, {"model": "lenet300", "config": {}, "info": {"dataset": "tiny"}})
    return path, tensors, size


def test_archive_loads_a_runnable_model(lenet_archive):
    path, tensors, _ = lenet_archive
    model, meta = load_archive_model(path)
    assert meta["model"] == "lenet300" and meta["info"] == {"dataset": "tiny"}
    ref = build_model("lenet300")
    ref.load_state_dict({k: torch.from_numpy(t.to_dense() if not isinstance(t, DenseTensor) else t.array)
                         for k, t in tensors.items()})
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(model.eval()(x), ref.eval()(x), rtol=0, atol=0)
    model2, _ = load_model(path)  # what `nnshrink eval` uses
    torch.testing.assert_close(model2.eval()(x), ref(x), rtol=0, atol=0)


def test_unknown_model_gives_tensors_not_a_model(tmp_path):
    path = tmp_path / "u.nsk"
    write_archive(path, {"foo": DenseTensor(np.arange(6, dtype=np.float32).reshape(2, 3))}, {"model": None})
    with pytest.raises(CheckpointError, match="decompress"):
        load_archive_model(path)
    t = load_archive_tensors(path)
    assert torch.equal(t["foo"], torch.arange(6, dtype=torch.float32).reshape(2, 3))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nnshrink", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def _main(capsys, *args):
    from nnshrink.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().out


def test_inspect_and_decompress_commands(lenet_archive, tmp_path, capsys):
    path, tensors, size = lenet_archive
    rc, out = _main(capsys, "inspect", path, "--json")
    assert rc == 0
    rep = json.loads(out)
    assert rep["compressed_bytes"] == size == path.stat().st_size
    assert rep["original_bytes"] == 4 * sum(int(np.prod(t.shape)) for t in tensors.values())
    assert rep["ratio"] == pytest.approx(rep["original_bytes"] / size)
    ip1 = next(l for l in rep["layers"] if l["name"] == "ip1.weight")
    assert ip1["shape"] == [300, 784] and ip1["params"] == 235200
    assert ip1["nonzero"] == int(tensors["ip1.weight"].mask.sum())
    assert ip1["weight_bits"]["before"] == 5 and ip1["index_bits"]["before"] == 5
    assert set(ip1) >= {"name", "shape", "params", "nonzero", "weight_bits", "index_bits", "bytes"}
    text = _main(capsys, "inspect", path)[1]
    assert "ip1.weight" in text and "total" in text

    dense = tmp_path / "dense.safetensors"
    assert _main(capsys, "decompress", path, "-o", dense)[0] == 0
    model, meta = load_checkpoint(dense)  # what `nnshrink eval dense.safetensors` uses
    assert meta["model"] == "lenet300"
    np.testing.assert_array_equal(model.state_dict()["ip1.weight"].numpy(), tensors["ip1.weight"].to_dense())
    assert _main(capsys, "decompress", path, "-o", dense)[0] == 2  # exists, no --force
    assert _main(capsys, "decompress", path, "-o", dense, "--force")[0] == 0


def test_corrupt_archive_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.nsk"
    bad.write_bytes(b"NSK\n" + b"\xff" * 40)
    proc = _cli("inspect", bad)
    assert proc.returncode == 2 and "error" in proc.stderr and "Traceback" not in proc.stderr


def test_zero_dim_tensor_keeps_its_shape(tmp_path):
    import numpy as np

    from nnshrink.compressed import DenseTensor
    from nnshrink.format import read_archive, write_archive

    write_archive(tmp_path / "s.nsk", {"steps": DenseTensor(np.array(5, dtype=np.int64))}, {})
    state = read_archive(tmp_path / "s.nsk").dense_state()
    assert state["steps"].shape == () and int(state["steps"]) == 5
