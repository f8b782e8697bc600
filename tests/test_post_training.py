"""Post-training compression reports what it lost: per-tensor reconstruction error and warnings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from nnshrink.format import read_archive
from nnshrink.post_training import REL_ERROR_WARN, compress_tensors


@pytest.fixture
def src(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file({"enc.w": torch.randn(256, 128), "enc.b": torch.randn(256), "steps": torch.arange(4)}, str(path))
    return path


def _rows(report):
    return {r["name"]: r["rel_error"] for r in report["layers"]}


def test_rel_error_is_the_decoded_tensors_relative_l2(src, tmp_path):
    out = tmp_path / "a.nsk"
    rep = compress_tensors(src, out, sparsity=0.0, bits=5)
    from nnshrink.checkpoint import load_tensors

    orig = load_tensors(src)["enc.w"].double().numpy()
    dec = read_archive(out).dense_arrays()["enc.w"].astype(np.float64)
    want = np.linalg.norm(dec - orig) / np.linalg.norm(orig)
    rows = _rows(rep)
    assert rows["enc.w"] == pytest.approx(want) and 0.01 < want < REL_ERROR_WARN
    assert rows["enc.b"] == 0.0 and rows["steps"] == 0.0  # small and integer tensors stay exact
    assert rep["max_rel_error"] == pytest.approx(want) and rep["max_rel_error_tensor"] == "enc.w"
    assert rep["warnings"] == []


def test_lossless_has_no_error_and_no_warning(src, tmp_path):
    rep = compress_tensors(src, tmp_path / "l.nsk", sparsity=0.0, bits=None)
    assert set(_rows(rep).values()) == {0.0} and rep["max_rel_error"] == 0.0 and rep["warnings"] == []


def test_pruning_and_a_large_error_are_warned(src, tmp_path):
    rep = compress_tensors(src, tmp_path / "p.nsk", sparsity=0.9, bits=5)
    assert rep["max_rel_error"] > 0.5  # 90 % of a Gaussian tensor's weights hold ~56 % of its energy
    prune, large = rep["warnings"]
    assert "pruning without retraining" in prune and "0.9" in prune
    assert f"above {REL_ERROR_WARN:g}" in large and "'enc.w'" in large


def test_cli_warns_on_stderr_one_line_each(src, tmp_path, capsys):
    from nnshrink.cli import main

    assert main(["compress", str(src), "-o", str(tmp_path / "c.nsk"), "--no-retrain", "--sparsity", "0.9",
                 "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout stays pure JSON
    lines = captured.err.strip().splitlines()
    assert len(lines) == len(report["warnings"]) == 2 and all(line.startswith("warning: ") for line in lines)
    assert main(["compress", str(src), "-o", str(tmp_path / "d.nsk"), "--no-retrain", "--bits", "8"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "reconstruction error (relative L2): worst" in captured.out
