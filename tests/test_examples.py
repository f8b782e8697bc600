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


def test_distill_loss_is_the_tempered_kl_divergence():
    """Against the textbook formula written out: T^2 * sum p_t (log p_t - log p_s), batch mean."""
    from examples.common import distill_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g), torch.randn(16, 10, generator=g)
    for temp in (1.0, 4.0):
        pt = (t / temp).softmax(1)
        want = temp ** 2 * (pt * (pt.log() - (s / temp).log_softmax(1))).sum(1).mean()
        torch.testing.assert_close(distill_loss(s, t, temp), want)
    assert float(distill_loss(t, t, 4.0)) == pytest.approx(0.0, abs=1e-6)


def test_distilled_fine_tuning_pulls_the_student_towards_the_teacher():
    """With distill=1 the labels are ignored: a student trained on random labels still ends
    up closer to its teacher's outputs than it started."""
    from torch.utils.data import DataLoader, TensorDataset

    from examples.common import distill_loss, train

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    teacher = torch.nn.Linear(8, 4)
    student = torch.nn.Linear(8, 4)
    loader = DataLoader(TensorDataset(x, torch.randint(0, 4, (256,))), batch_size=32, shuffle=False)
    with torch.no_grad():
        before = float(distill_loss(student(x), teacher(x), 4.0))
    train(student, loader, 5, lr=0.05, teacher=teacher, distill=1.0)
    with torch.no_grad():
        assert float(distill_loss(student(x), teacher(x), 4.0)) < 0.2 * before


def test_distill_weight_out_of_range_is_a_clear_error():
    from torch.utils.data import DataLoader, TensorDataset

    from examples.common import train
    from nnshrink.errors import ConfigError

    loader = DataLoader(TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), batch_size=4)
    with pytest.raises(ConfigError, match="distill must be in \\(0, 1\\] with a teacher; got 1.5"):
        train(torch.nn.Linear(4, 2), loader, 1, lr=0.01, teacher=torch.nn.Linear(4, 2), distill=1.5)


@pytest.mark.slow  # two full runs of the example (~35 s)
def test_compression_seed_is_deterministic_and_distillation_runs(tiny_idx_dir, tmp_path):
    """The same --seed gives the same archive, byte for byte, whether the float model was
    trained in this run or taken from the cache; the example's distillation and
    calibration options run end to end."""
    import dataclasses

    from examples import common, resnet_bn

    ex = dataclasses.replace(resnet_bn.EXAMPLE, distill=0.5, calibrate=True)
    argv = [*TINY, "--data-dir", str(tiny_idx_dir), "--out", str(tmp_path)]
    first = common.run(ex, argv)
    blob = (tmp_path / "resnet_bn.nsk").read_bytes()
    second = common.run(ex, argv)
    assert not first["train_cached"] and second["train_cached"]
    assert (tmp_path / "resnet_bn.nsk").read_bytes() == blob
    prune = json.loads((tmp_path / "report.json").read_text())["stages"][0]
    assert prune["stage"] == "prune" and prune["details"]["rounds"][-1]["bn_recalibrated"]  # calibrate= was used
