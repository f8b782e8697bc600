"""Top-1 through the runtime users run: `nnshrink eval --runtime` and the pipeline's
top1_after agree with the dense decode (within 0.05 points)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

import nnshrink
from nnshrink.data import Dataset
from nnshrink.train import evaluate
from test_runtime_load import ConvNet

NNSHRINK = [sys.executable, "-m", "nnshrink"]


def _data(n=3000, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 14, 14, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset("synthetic", x[:10], y[:10], x, y)


def test_top1_of_every_runtime_matches_the_dense_decode(tmp_path):
    torch.manual_seed(0)
    net = ConvNet()
    data = _data()
    nnshrink.compress(net, progress=False).save(tmp_path / "m.nsk")
    with torch.no_grad():  # labels the compressed net gets two-thirds right: top-1 is not a constant
        decoded = nnshrink.load(tmp_path / "m.nsk", model=ConvNet()).eval()
        data.test_y[:2000] = decoded(data.test_x[:2000]).argmax(1)
    torch.manual_seed(0)  # the same net again (compression is deterministic), now with top1_after
    res = nnshrink.compress(ConvNet(), evaluate=lambda m: evaluate(m, data), progress=False)
    res.save(tmp_path / "m.nsk")
    top1 = {rt: evaluate(nnshrink.load(tmp_path / "m.nsk", model=ConvNet(), runtime=rt), data)
            for rt in ("dense", "compressed", "auto")}
    assert 0.2 < top1["dense"] < 0.9
    assert abs(top1["compressed"] - top1["dense"]) <= 0.0005
    assert abs(top1["auto"] - top1["dense"]) <= 0.0005
    assert abs(res.report["top1_after"] - top1["dense"]) <= 0.0005  # measured through runtime="auto"


@pytest.mark.slow
def test_eval_cli_runtime_flag(tiny_idx_dir, tmp_path):
    from nnshrink.checkpoint import save_checkpoint
    from nnshrink.models import build_model, resolve_config

    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model("lenet300"), tmp_path / "b.safetensors", "lenet300", resolve_config("lenet300"))
    out = tmp_path / "m.nsk"
    subprocess.run([*NNSHRINK, "compress", ckpt, "-o", out, "--no-retrain", "--quiet"], check=True,
                   capture_output=True, timeout=300)
    reports = {}
    for rt in ("dense", "compressed", "auto"):
        p = subprocess.run([*NNSHRINK, "eval", out, "--dataset", "idx", "--data-dir", tiny_idx_dir, "--runtime", rt,
                            "--json"], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        reports[rt] = json.loads(p.stdout)
    assert reports["dense"]["layers_runtime"] == {} and reports["dense"]["runtime"] == "dense"
    assert set(reports["compressed"]["layers_runtime"]) == {"ip1", "ip2", "ip3"}
    assert reports["auto"]["runtime"] == "auto" and set(reports["auto"]["layers_runtime"]) == {"ip1", "ip2", "ip3"}
    for rt in ("compressed", "auto"):
        assert abs(reports[rt]["top1"] - reports["dense"]["top1"]) <= 0.0005
    bad = subprocess.run([*NNSHRINK, "eval", out, "--runtime", "gpu"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "'gpu'" in bad.stderr


def test_top1_after_falls_back_to_dense_where_the_metric_leaves_the_cpu():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 14, 14)

    def on_meta(m):  # a metric that runs (a copy of) the model on another device: kernels cannot go there
        copy.deepcopy(m).to("meta")(x.to("meta"))
        return 1.0

    cpu = nnshrink.compress(ConvNet(), evaluate=lambda m: float(m(x).sum() != 0), progress=False)
    assert cpu.report["top1_after_runtime"] == "auto"
    meta = nnshrink.compress(ConvNet(), evaluate=on_meta, progress=False)
    assert meta.report["top1_after_runtime"] == "dense" and meta.report["top1_after"] == 1.0
