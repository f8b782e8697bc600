"""ONNX export: both forms run in onnxruntime and match PyTorch; the codebook form really
stores uint8 indices + a codebook joined by Gather, and is smaller."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import nnshrink
from nnshrink.cli import main
from nnshrink.compressed import SharedTensor
from nnshrink.onnx_export import ExportError, codebook_parts, export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def lenet_archive(tmp_path_factory):
    """A LeNet-300-100 archive pruned to 90% and shared at 5 bits (by hand, no training)."""
    from nnshrink.models import build_model, resolve_config
    from nnshrink.prune import prune_model
    from nnshrink.quantize.share import share_weights

    torch.manual_seed(0)
    model = build_model("lenet300")
    prune_model(model, 0.9)
    share_weights(model, bits=5)
    path = tmp_path_factory.mktemp("lenet") / "lenet300.nsk"
    nnshrink.write_archive(path, nnshrink.export(model), {"model": "lenet300", "config": resolve_config("lenet300")})
    return path


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def initializers(path) -> dict[str, np.ndarray]:
    """Every stored tensor by name, also the names the exporter points at an equal one
    (an Identity node: equal tensors are stored once)."""
    graph = onnx.load(str(path)).graph
    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- codebook_parts
def _shared(rng, shape, k, mask_fraction=None, zero_centroid=False) -> SharedTensor:
    codebook = rng.normal(size=k).astype(np.float32)
    if zero_centroid:
        codebook[k // 2] = 0.0
    mask = None if mask_fraction is None else rng.random(shape) < mask_fraction
    n = int(np.prod(shape)) if mask is None else int(mask.sum())
    return SharedTensor(shape, codebook, rng.integers(0, k, n).astype(np.uint8), 8, mask)


@pytest.mark.parametrize("k,mask_fraction,zero_centroid,appended,keep", [
    (16, None, False, False, False),   # dense: indices as they are
    (16, 0.3, True, False, False),     # pruned positions take the codebook's own 0.0
    (16, 0.3, False, True, False),     # a 0.0 appended (room left)
    (256, 0.3, False, False, True),    # all 256 slots taken: a keep-mask instead
    (256, 0.3, True, False, False),    # 256 slots, one of them 0.0: no mask needed
])
def test_codebook_parts_decode_exactly(k, mask_fraction, zero_centroid, appended, keep):
    rng = np.random.default_rng(k)
    t = _shared(rng, (12, 20), k, mask_fraction, zero_centroid)
    codebook, indices, mask = codebook_parts(t)
    assert indices.dtype == np.uint8 and indices.shape == t.shape and codebook.dtype == np.float32
    assert len(codebook) == k + appended
    assert (mask is not None) == keep
    decoded = codebook[indices.astype(np.int64)]
    if mask is not None:
        decoded = np.where(mask, decoded, np.float32(0))
    np.testing.assert_array_equal(decoded, t.to_dense())


# ----------------------------------------------------------------------------- zoo archive
def test_cli_writes_both_forms_that_match_pytorch_in_onnxruntime(lenet_archive, tmp_path, capsys):
    dense, small, report = tmp_path / "dense.onnx", tmp_path / "codebook.onnx", tmp_path / "export.json"
    rc, out, err = cli(capsys, "export", lenet_archive, "--onnx", dense, "--onnx-codebook", small,
                       "--json", report)
    assert rc == 0, err
    rep = json.loads(report.read_text())
    assert rep["archive_bytes"] == lenet_archive.stat().st_size
    assert rep["onnx_bytes"] == dense.stat().st_size and rep["onnx_codebook_bytes"] == small.stat().st_size
    assert f"{small.stat().st_size:,} bytes" in out and f"{lenet_archive.stat().st_size:,} bytes" in out
    assert all(f["max_abs_diff"] < 1e-4 for f in rep["files"])

    x = torch.rand(5, 1, 28, 28)  # another batch size than the export's
    with torch.no_grad():
        want = nnshrink.load(lenet_archive).eval()(x).numpy()
    for path in (dense, small):
        np.testing.assert_allclose(run_onnx(path, x), want, rtol=1e-4, atol=1e-5)

    # the codebook file stores uint8 indices + a float codebook per shared weight, joined by Gather
    inits, graph = initializers(small), onnx.load(str(small)).graph
    with nnshrink.open_archive(lenet_archive) as archive:
        shared = [n for n in archive.keys() if isinstance(archive.get(n), SharedTensor)]
        assert sorted(shared) == sorted(rep["files"][1]["codebook_tensors"]) == ["ip1.weight", "ip2.weight",
                                                                                  "ip3.weight"]
        for name in shared:
            assert name not in inits  # no float copy of the weight
            idx, cb = inits[f"{name}.indices"], inits[f"{name}.codebook"]
            assert idx.dtype == np.uint8 and cb.dtype == np.float32 and len(cb) <= 33
            # pruned zeros and every kept value come back exactly
            np.testing.assert_array_equal(cb[idx.astype(np.int64)], archive.get(name).to_dense())
    gathers = [n for n in graph.node if n.op_type == "Gather"]
    assert sorted(n.input[0] for n in gathers) == sorted(f"{n}.codebook" for n in shared)
    assert small.stat().st_size < dense.stat().st_size / 3.5  # ip1 + ip2 + ip3: 1 byte instead of 4


def test_api_exports_a_model_in_memory_with_its_codebooks(tmp_path):
    """A model pruned and shared in-process, with 256 centroids (the keep-mask path)."""
    from nnshrink.prune import prune_model
    from nnshrink.quantize.share import share_weights

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    prune_model(model, 0.5)
    share_weights(model, bits=8)
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = model(x).numpy()
    rep = export_onnx(model, tmp_path / "m.onnx", codebook=True, example_input=torch.randn(2, 64), check=True)
    assert rep["codebook_tensors"] == ["0.weight", "2.weight"] and rep["archive_bytes"] is None
    assert rep["max_abs_diff"] < 1e-5
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), want, rtol=1e-5, atol=1e-6)
    inits = initializers(tmp_path / "m.onnx")
    assert inits["0.weight.keep"].dtype == bool  # 256 nonzero centroids: the mask restores the zeros
    with torch.no_grad():
        assert torch.equal(model(x), torch.from_numpy(want))  # the caller's model is untouched


# ----------------------------------------------------------------------------- own models
@pytest.mark.parametrize("name", ["resnet_bn", "tiny_vit"])
def test_own_example_models_export_both_forms(name, tmp_path, capsys, monkeypatch):
    """The examples' models with their recipes (no retraining: fast), through the CLI's --model-factory."""
    import importlib
    import tomllib

    from nnshrink.recipes import recipe_from_dict

    mod = importlib.import_module(f"examples.{name}")
    torch.manual_seed(0)
    result = nnshrink.compress(mod.build(), recipe_from_dict(tomllib.loads(mod.RECIPE), name), progress=False)
    archive = tmp_path / f"{name}.nsk"
    result.save(archive)
    dense, small = tmp_path / "dense.onnx", tmp_path / "codebook.onnx"
    rc, out, err = cli(capsys, "export", archive, "--onnx", dense, "--onnx-codebook", small, "--model-factory",
                       f"examples.{name}:build", "--input-shape", "1,28,28", "--json")
    assert rc == 0, err
    rep = json.loads(out)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        want = nnshrink.load(archive, model=mod.build()).eval()(x).numpy()
    for path in (dense, small):
        np.testing.assert_allclose(run_onnx(path, x), want, rtol=1e-4, atol=1e-4)
    shared, stored = rep["files"][1]["codebook_tensors"], initializers(small)
    assert shared and all(stored[f"{n}.indices"].dtype == np.uint8 for n in shared)
    assert not any(n in stored for n in shared)  # no float copy of a shared weight
    if name == "tiny_vit":
        assert any(n.endswith("self_attn.in_proj_weight") for n in shared)
    assert rep["onnx_codebook_bytes"] < rep["onnx_bytes"]


# ----------------------------------------------------------------------------- bad input
def test_own_model_archive_without_factory_is_one_line(tmp_path, capsys):
    from examples.resnet_bn import build

    archive = tmp_path / "own.nsk"
    nnshrink.write_archive(archive, nnshrink.export(build()), {"model": None, "info": {"class": "x.Net"}})
    rc, out, err = cli(capsys, "export", archive, "--onnx", tmp_path / "o.onnx")
    assert rc == 2 and err.count("\n") == 1 and "--model-factory" in err and "'x.Net'" in err
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("args,words", [
    ([], "nothing to write"),
    (["--onnx", "{t}/a.onnx", "--onnx-codebook", "{t}/a.onnx"], "name the same file"),
    (["--onnx", "{t}/a.onnx", "--input-shape", "1,x"], "--input-shape must be"),
    (["--onnx", "{t}/a.onnx", "--input-shape", "0,28"], "--input-shape sides must be"),
    (["--onnx", "{t}/a.onnx", "--model-factory", "examples.resnet_bn:build"], "--input-shape C,H,W is needed"),
    (["--onnx", "{t}/a.onnx", "--opset", "7"], "--opset must be in 13..20; got 7"),
    (["--onnx", "{t}/no/such/dir/a.onnx"], "does not exist"),
])
def test_bad_flags_are_one_line(lenet_archive, tmp_path, capsys, args, words):
    rc, out, err = cli(capsys, "export", lenet_archive, *[a.format(t=tmp_path) for a in args])
    assert rc == 2 and err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "a.onnx").exists()


def test_existing_output_needs_force(lenet_archive, tmp_path, capsys):
    out = tmp_path / "a.onnx"
    out.write_bytes(b"mine")
    rc, _, err = cli(capsys, "export", lenet_archive, "--onnx", out, "--no-check")
    assert rc == 2 and "--force" in err and out.read_bytes() == b"mine"
    rc, _, err = cli(capsys, "export", lenet_archive, "--onnx", out, "--no-check", "--force")
    assert rc == 0 and onnx.load(str(out)).graph.node


def test_a_forward_that_fixes_the_batch_is_refused_before_writing(tmp_path):
    class FixedBatch(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x).reshape(len(x), 2)  # len(x) is traced as a constant

    with pytest.raises(ExportError, match="does not run at input"):
        export_onnx(FixedBatch(), tmp_path / "f.onnx", example_input=torch.randn(2, 4), check=True)
    assert not (tmp_path / "f.onnx").exists()


def test_module_without_example_input_is_a_clear_error(tmp_path):
    from nnshrink.errors import ConfigError

    with pytest.raises(ConfigError, match="example_input is needed"):
        export_onnx(nn.Linear(3, 2), tmp_path / "l.onnx")


@pytest.mark.parametrize("content,words", [
    (b"NSK\x00garbage" * 4, "nsk"),            # a damaged archive: the format's own error
    (b"\xff" * 64, "safetensors"),             # neither an archive nor a checkpoint
])
def test_bad_input_file_is_one_line(tmp_path, capsys, content, words):
    bad = tmp_path / "bad.nsk"
    bad.write_bytes(content)
    rc, _, err = cli(capsys, "export", bad, "--onnx", tmp_path / "o.onnx")
    assert rc == 2 and err.count("\n") == 1 and words in err.lower(), err
    assert not (tmp_path / "o.onnx").exists()
