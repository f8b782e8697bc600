"""The own-model examples run end to end on a tiny IDX set: train, compress, save, load, evaluate."""

from __future__ import annotations

import importlib
import importlib.util
import json
import tomllib

import pytest
import torch

import nnshrink

TINY = ["--subset", "200", "--epochs", "1"]


def run_example(name: str, data_dir, out, *extra: str) -> tuple[object, dict]:
    mod = importlib.import_module(f"examples.{name}")
    return mod, mod.main([*TINY, "--data-dir", str(data_dir), "--out", str(out), *extra])


@pytest.mark.parametrize("name", ["resnet_bn", "tiny_vit"])
def test_example_compresses_saves_loads_and_evaluates(name, tiny_idx_dir, tmp_path):
    mod, res = run_example(name, tiny_idx_dir, tmp_path)
    archive = tmp_path / f"{name}.nsk"
    assert archive.stat().st_size == res["archive_bytes"]
    assert res["ratio"] > 1 and 0.0 <= res["top1_loaded"] <= 1.0 and not res["train_cached"]
    assert (tmp_path / "report.json").is_file() and (tmp_path / "summary.json").is_file()
    x = torch.rand(8, 1, 28, 28)
    fresh = nnshrink.load(archive, model=mod.build()).eval()
    with torch.no_grad():
        compressed = res["model"].eval()(x)
        torch.testing.assert_close(res["loaded"](x), compressed, rtol=0, atol=0)
        torch.testing.assert_close(fresh(x), compressed, rtol=0, atol=0)
    assert res["max_abs_diff_loaded_vs_compressed"] == 0.0
    if importlib.util.find_spec("onnxruntime"):  # the trained archive exports to ONNX in its codebook form
        from nnshrink.onnx_export import export_onnx

        onnx_rep = export_onnx(archive, tmp_path / f"{name}.onnx", codebook=True, model=mod.build(),
                               example_input=x, check=True)
        assert onnx_rep["codebook_tensors"] and onnx_rep["max_abs_diff"] < 1e-4
    if name == "tiny_vit":  # attention input projections: pruned and shared, as the recipe says
        rows = json.loads((tmp_path / "report.json").read_text())["layers"]
        in_proj = [r for r in rows if r["name"].endswith("self_attn.in_proj_weight")]
        assert len(in_proj) == 4
        assert all(r["encoding"] == "shared" and r["nonzero"] < r["params"] for r in in_proj)


def test_float_model_is_cached_per_training_settings(tmp_path):
    from examples.common import load_or_train
    from examples.resnet_bn import build

    calls = []
    path, key = tmp_path / "base.safetensors", {"epochs": "1", "subset": "200"}
    first, cached, seconds = load_or_train(build, path, calls.append, key)
    again, cached_again, seconds_again = load_or_train(build, path, calls.append, key)
    assert len(calls) == 1 and not cached and cached_again and seconds_again == seconds
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    load_or_train(build, path, calls.append, {**key, "subset": "100"})
    assert len(calls) == 2  # other settings: trained again, not reused


def test_bad_subset_is_a_clear_error(tiny_idx_dir, tmp_path):
    from nnshrink.errors import ConfigError

    with pytest.raises(ConfigError, match="subset must be >= 1 image; got 0"):
        run_example("resnet_bn", tiny_idx_dir, tmp_path, "--subset", "0")


def test_cli_compresses_the_example_with_its_factories(tiny_idx_dir, tmp_path):
    """`nnshrink compress --model-factory ... --data-factory ...` on a checkpoint of the example's model."""
    import os
    import subprocess
    import sys

    from safetensors.torch import save_file

    from examples import resnet_bn

    torch.manual_seed(0)
    ckpt, recipe, out = tmp_path / "base.safetensors", tmp_path / "recipe.toml", tmp_path / "cli.nsk"
    save_file(resnet_bn.build().state_dict(), str(ckpt))
    recipe.write_text(resnet_bn.RECIPE)
    env = {**os.environ, "NNSHRINK_DATA": str(tiny_idx_dir)}  # loaders() reads the tiny set
    proc = subprocess.run([sys.executable, "-m", "nnshrink", "compress", str(ckpt), "--model-factory",
                           "examples.resnet_bn:build", "--data-factory", "examples.resnet_bn:loaders", "--recipe",
                           str(recipe), "-o", str(out), "--json", str(tmp_path / "cli.json"), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "cli.json").read_text())
    assert report["compressed_bytes"] == out.stat().st_size and report["top1_after"] is not None
    weights = {r["name"]: r for r in report["layers"] if r["name"].endswith("weight") and len(r["shape"]) > 1}
    assert len(weights) == 11 and all(r["encoding"] == "shared" for r in weights.values())
    sparsity = tomllib.loads(resnet_bn.RECIPE)["prune"]["layers"]["blocks.2.conv2"]
    assert weights["blocks.2.conv2.weight"]["nonzero"] == 147456 - round(sparsity * 147456)
    loaded = nnshrink.load(out, model=resnet_bn.build())
    assert int(loaded.blocks[2].conv2.weight.count_nonzero()) == weights["blocks.2.conv2.weight"]["nonzero"]
