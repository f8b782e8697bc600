"""``nnshrink bench`` end to end on a tiny run, and the interleaved timer it uses."""

from __future__ import annotations

import json

import pytest
import torch

from nnshrink.cli import main
from nnshrink.commands.bench import compress_linears
from nnshrink.models import build_model
from nnshrink.runtime.timing import time_interleaved


def test_time_interleaved_orders_slow_and_fast():
    import time

    med = time_interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.002)}, repeats=3,
                           min_sample_s=1e-3, clock="wall")
    assert set(med) == {"fast", "slow"} and med["slow"] > med["fast"] and med["slow"] >= 0.0019

    def spin():
        t = time.thread_time()
        while time.thread_time() - t < 0.002:
            pass

    # the thread clock counts work done in this thread
    med = time_interleaved({"fast": lambda: None, "spin": spin}, repeats=3, min_sample_s=1e-3, clock="thread")
    assert med["fast"] < 0.001 and med["spin"] >= 0.0019


def test_compress_linears_prunes_and_shares():
    model = build_model("lenet300")
    sparse, shared = compress_linears(model, 0.9, 3)
    assert set(sparse) == {"ip1.weight", "ip2.weight", "ip3.weight"}
    t = shared["ip1.weight"]
    assert len(t.codebook) <= 8 and abs(t.mask.mean() - 0.1) < 0.01
    assert torch.equal(model.ip1.weight, torch.from_numpy(t.to_dense()))


def test_bench_cli_json(capsys):
    rc = main(["bench", "--model", "lenet300", "--batch", "1,3", "--repeats", "3", "--json"])
    assert rc in (0, None)
    rep = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rep["layers"]] == ["ip1", "ip1", "ip2", "ip2", "ip3", "ip3"]
    assert [r["batch"] for r in rep["model"]] == [1, 3]
    for row in rep["layers"] + rep["model"]:
        assert set(row["speedup_vs_dense"]) >= {"sparse", "codebook"}
        assert all(v > 0 for v in row["median_us"].values())
    assert rep["binary_skipped"]
    assert set(rep["columns"]) == {"dense", "sparse", "codebook"} and "baseline" in rep["columns"]["dense"]


@pytest.mark.parametrize("argv, msg", [
    (["--sparsity", "1.3"], "sparsity must be in [0, 1); got 1.3"),
    (["--bits", "9"], "bits must be in 1..8; got 9"),
    (["--batch", "1,x"], "--batch"),
    (["--model", "nosuch"], "nosuch"),
])
def test_bench_bad_input(argv, msg, capsys):
    assert main(["bench", "--repeats", "3", *argv]) == 2
    assert msg in capsys.readouterr().err


def test_bench_reads_an_archive(tmp_path, capsys):
    pytest.importorskip("nnshrink.format.writer")
    from nnshrink.compressed import DenseTensor
    from nnshrink.format.writer import write_archive

    model = build_model("lenet300")
    _, shared = compress_linears(model, 0.8, 4)
    tensors = {k: DenseTensor(v.detach().numpy().copy()) for k, v in model.state_dict().items()}
    tensors.update(shared)
    path = tmp_path / "m.nsk"
    write_archive(path, tensors, {"model": "lenet300", "config": {}})
    assert main(["bench", "--model", str(path), "--batch", "2", "--repeats", "3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["source"].startswith("archive") and len(rep["layers"]) == 3
    assert set(rep["model"][0]["speedup_vs_dense"]) >= {"sparse", "codebook"}


def test_float_twin_is_the_same_architecture_in_float():
    from nnshrink.commands.bench import float_twin
    from nnshrink.quantize.binary import binary_layers

    model = build_model("lenet5-xnor").eval()
    twin = float_twin(model)
    assert binary_layers(model) and not binary_layers(twin)
    assert ({k: v.shape for k, v in twin.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()})
    plain = build_model("lenet300")
    assert float_twin(plain) is plain


def test_bench_measures_a_binary_net_against_its_float_model(capsys):
    assert main(["bench", "--model", "lenet5-xnor", "--batch", "8", "--repeats", "3", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    row = rep["model"][0]
    assert set(row["median_us"]) == set(rep["columns"]) == {"dense", "sparse", "codebook", "binary",
                                                            "float_emulation"}
    assert "same architecture" in rep["columns"]["dense"] and "emulated in float" in rep["columns"]["float_emulation"]
    # the slow float emulation of the XNOR layers is a column of its own, never the baseline
    assert row["median_us"]["float_emulation"] > 2 * row["median_us"]["dense"]
    assert row["speedup_vs_dense"]["float_emulation"] < 0.5


def test_bench_runs_a_binary_archive_like_its_checkpoint(tmp_path, capsys):
    from nnshrink.models import resolve_config
    from nnshrink.pipeline import archive_metadata, compress_model
    from nnshrink.recipes import load_recipe
    from nnshrink.stages import Context

    meta = archive_metadata("lenet5-xnor", resolve_config("lenet5-xnor"), {})
    done = compress_model(build_model("lenet5-xnor"), load_recipe("binary", "lenet5-xnor"), Context(progress=False),
                          metadata=meta)
    path = tmp_path / "x.nsk"
    path.write_bytes(done.blob)
    assert main(["bench", "--model", str(path), "--batch", "4", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    model_row = next(l for l in out.splitlines() if l.startswith("model"))
    assert "binary x" in model_row and "float_emulation x" in model_row
    legend = out[out.index("columns:"):].splitlines()
    assert [l.split()[0] for l in legend[1:]] == ["dense", "binary", "float_emulation", "sparse", "codebook"]
    assert "skipped (no sparse or shared Linear weights)" in legend[4]


@pytest.fixture
def lenet5_archive(tmp_path):
    from nnshrink.models import resolve_config
    from nnshrink.pipeline import archive_metadata, compress_model
    from nnshrink.recipes import load_recipe
    from nnshrink.stages import Context

    torch.manual_seed(0)
    meta = archive_metadata("lenet5", resolve_config("lenet5"), {})
    done = compress_model(build_model("lenet5"), load_recipe("deep-compression", "lenet5"), Context(progress=False),
                          metadata=meta)
    path = tmp_path / "l5.nsk"
    path.write_bytes(done.blob)
    return path


def test_bench_file_times_each_runtime_and_its_resident_bytes(lenet5_archive, capsys):
    assert main(["bench", str(lenet5_archive), "--batch", "2", "--threads", "1,2", "--repeats", "3",
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [(r["threads"], r["batch"]) for r in rep["rows"]] == [(1, 2), (2, 2)]
    for row in rep["rows"]:
        assert set(row["median_us"]) == {"dense", "compressed", "auto"}
    res = rep["resident_weight_bytes"]
    assert res["dense"] == 4 * 431_080  # LeNet-5's float32 parameters
    assert res["compressed"] < 0.2 * res["dense"]
    assert set(rep["layers_runtime"]["compressed"]) == {"conv1", "conv2", "ip1", "ip2"}
    assert rep["layers_runtime"]["compressed"]["ip1"] == "codebook"
    assert set(rep["columns"]) == {"dense", "compressed", "auto"}
    main(["bench", str(lenet5_archive), "--batch", "1", "--threads", "1", "--repeats", "3"])
    out = capsys.readouterr().out
    assert "resident weight bytes: dense 1724320 (100.0%), compressed" in out and "auto: conv1 " in out


@pytest.mark.parametrize("argv, msg", [
    (["--threads", "0"], "--threads must be comma-separated counts >= 1 or 'all'; got '0'"),
    (["--threads", "1,2", "--model", "lenet300"], "--threads takes one count with --model"),
])
def test_bench_file_bad_flags(argv, msg, lenet5_archive, capsys):
    args = ["bench", *argv] if "--model" in argv else ["bench", str(lenet5_archive), *argv]
    assert main([*args, "--repeats", "3"]) == 2
    assert msg in capsys.readouterr().err


def test_bench_file_refuses_a_checkpoint(tmp_path, capsys):
    from nnshrink.checkpoint import save_checkpoint
    from nnshrink.models import resolve_config

    ckpt = save_checkpoint(build_model("lenet300"), tmp_path / "b.safetensors", "lenet300", resolve_config("lenet300"))
    assert main(["bench", str(ckpt), "--repeats", "3"]) == 2
    assert "bench FILE takes an .nsk archive" in capsys.readouterr().err
