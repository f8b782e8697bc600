"""The Deep Compression pipeline end to end on a tiny self-made dataset."""

import json
import re
import subprocess
import sys
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from nnshrink import pipeline
from nnshrink.checkpoint import save_checkpoint
from nnshrink.errors import ConfigError
from nnshrink.loading import load_model
from nnshrink.models import build_model, resolve_config
from nnshrink.recipes import recipe_from_dict
from nnshrink.stages import REGISTRY
from nnshrink.train import TrainConfig, evaluate, fit

FAST = {"stages": ["prune", "share", "encode"],
        "prune": {"sparsity": 0.8, "rounds": 2, "retrain_epochs": 1},
        "share": {"fc_bits": 4, "finetune_epochs": 1}}


@pytest.fixture
def trained(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet300")
    fit(model, tiny_dataset, TrainConfig(epochs=6, batch_size=32), progress=False, eval_each_epoch=False)
    return save_checkpoint(model, tmp_path / "base.safetensors", "lenet300", resolve_config("lenet300"))


def test_compress_end_to_end(trained, tiny_dataset, tmp_path):
    out = tmp_path / "m.nsk"
    rep = pipeline.compress_checkpoint(trained, out, recipe_from_dict(FAST), data=tiny_dataset, progress=False,
                                       plots=tmp_path / "w.png")
    assert rep["compressed_bytes"] == out.stat().st_size
    assert rep["ratio"] == pytest.approx(rep["original_bytes"] / out.stat().st_size)
    assert rep["original_bytes"] == 4 * 266_610
    assert rep["ratio"] > 8
    assert [r["rung"] for r in rep["ladder"]] == ["dense", "pruned", "pruned+shared", "+Huffman"]
    sizes = [r["bytes"] for r in rep["ladder"]]
    assert sizes == sorted(sizes, reverse=True)
    # accuracy measured from the archive itself agrees with the report
    model, _ = load_model(out)
    assert evaluate(model, tiny_dataset) == pytest.approx(rep["top1_after"])
    assert rep["top1_after"] > 0.5
    w = model.ip1.weight.detach().numpy()
    assert 0.15 < (w != 0).mean() < 0.25 and len(np.unique(w[w != 0])) <= 16
    assert (tmp_path / "w.png").stat().st_size > 1000
    assert not (tmp_path / "m.nsk.work").exists()
    for key in ("stages", "layers", "top1_before"):
        assert key in rep
    json.dumps(rep)


def test_resume_after_kill_gives_same_result(trained, tiny_dataset, tmp_path, monkeypatch):
    recipe = recipe_from_dict(FAST)
    ref = tmp_path / "ref.nsk"
    pipeline.compress_checkpoint(trained, ref, recipe, data=tiny_dataset, progress=False)

    def killed(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "r.nsk"
    monkeypatch.setitem(REGISTRY, "share", replace(REGISTRY["share"], apply=killed))
    with pytest.raises(KeyboardInterrupt):
        pipeline.compress_checkpoint(trained, out, recipe, data=tiny_dataset, progress=False)
    assert not out.exists() and (tmp_path / "r.nsk.work" / "1-prune.json").is_file()
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="--resume"):
        pipeline.compress_checkpoint(trained, out, recipe, data=tiny_dataset, progress=False)
    rep = pipeline.compress_checkpoint(trained, out, recipe, data=tiny_dataset, progress=False, resume=True)
    assert rep["stages"][0].get("resumed") is True
    assert out.read_bytes() == ref.read_bytes()


def test_retraining_recipe_needs_dataset(trained, tmp_path):
    with pytest.raises(ConfigError, match="--dataset"):
        pipeline.compress_checkpoint(trained, tmp_path / "x.nsk", recipe_from_dict(FAST), data=None)


def test_no_retrain_without_dataset(trained, tmp_path):
    rep = pipeline.compress_checkpoint(trained, tmp_path / "x.nsk", recipe_from_dict(FAST), data=None,
                                       retrain=False, progress=False)
    assert rep["top1_after"] is None and rep["ratio"] > 8


def test_post_training_any_safetensors(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"enc.w": torch.from_numpy(rng.normal(size=(256, 128)).astype(np.float32)),
               "enc.b": torch.zeros(256), "steps": torch.tensor([3], dtype=torch.int64)}
    src = tmp_path / "foreign.safetensors"
    save_file(tensors, str(src))
    out = tmp_path / "f.nsk"
    rep = pipeline.compress_tensors(src, out, sparsity=0.9, bits=4)
    assert rep["compressed_bytes"] == out.stat().st_size and rep["ratio"] > 10
    from nnshrink.format import read_archive

    dense = read_archive(out).tensors["enc.w"].to_dense()
    orig = tensors["enc.w"].numpy()
    kept = dense != 0
    assert abs(kept.mean() - 0.1) < 0.01
    assert np.all(np.abs(orig[kept]) >= np.abs(orig[~kept]).max())
    assert np.abs(dense[kept] - orig[kept]).max() < 0.5


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "nnshrink", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_cli_compress_eval_inspect_agree(trained, tiny_idx_dir, tmp_path):
    rec = tmp_path / "fast.toml"
    rec.write_text('stages = ["prune", "share", "encode"]\n[prune]\nsparsity = 0.8\nrounds = 1\n'
                   'retrain_epochs = 1\n[share]\nfc_bits = 4\nfinetune_epochs = 0.5\n')
    out, rj = tmp_path / "c.nsk", tmp_path / "r.json"
    p = run_cli("compress", trained, "-o", out, "--recipe", rec, "--dataset", "idx", "--data-dir", tiny_idx_dir,
                "--json", rj, "--quiet")
    assert p.returncode == 0, p.stderr
    rep = json.loads(rj.read_text())
    ev = json.loads(run_cli("eval", out, "--dataset", "idx", "--data-dir", tiny_idx_dir, "--json").stdout)
    assert ev["top1"] == pytest.approx(rep["top1_after"])
    again = run_cli("compress", trained, "-o", out, "--recipe", rec, "--dataset", "idx", "--data-dir", tiny_idx_dir)
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr
    nodata = run_cli("compress", trained, "-o", tmp_path / "d.nsk")
    assert nodata.returncode == 2 and "--dataset" in nodata.stderr
    bad = run_cli("compress", trained, "-o", tmp_path / "e.nsk", "--sparsity", "1.3", "--no-retrain")
    assert bad.returncode == 2 and "1.3" in bad.stderr


def test_demo_quick_on_tiny_data(tiny_idx_dir, tmp_path):
    p = run_cli("demo", "--quick", "--dataset", "idx", "--data-dir", tiny_idx_dir, "--out-dir", tmp_path / "d",
                "--quiet")
    assert p.returncode == 0, p.stderr
    assert "paper" in p.stdout and "LeNet-300-100" in p.stdout and "LeNet-5" in p.stdout
    summary = json.loads((tmp_path / "d" / "demo.json").read_text())
    for rep in summary["reports"]:
        assert rep["compressed_bytes"] == (tmp_path / "d" / f"{rep['model']}.nsk").stat().st_size


def test_demo_quick_recipe_skips_the_long_final_retraining():
    from nnshrink.commands.demo import quick_recipe
    from nnshrink.recipes import load_recipe

    for name in ("lenet300", "lenet5"):
        full = load_recipe("deep-compression", name)
        quick = quick_recipe(full)
        assert full.prune.final_epochs > 1
        assert quick.prune.rounds == 1 and quick.prune.retrain_epochs == 0.3 and quick.prune.final_epochs == -1
        assert quick.share.finetune_epochs == 0.2


@pytest.mark.slow
def test_demo_quick_on_fashion_mnist(tmp_path):
    p = run_cli("demo", "--quick", "--out-dir", tmp_path / "d", "--quiet")
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert all(r["ratio"] > 20 and r["top1_after"] > 0.8 for r in summary["reports"])


def test_binary_recipe_packs_one_bit(tiny_dataset, tmp_path):
    from nnshrink.format import read_archive
    from nnshrink.recipes import load_recipe

    torch.manual_seed(0)
    model = build_model("lenet5-bwn")
    fit(model, tiny_dataset, TrainConfig(epochs=1, batch_size=64, optimizer="adam", lr=2e-3, weight_decay=0),
        progress=False, eval_each_epoch=False)
    ckpt = save_checkpoint(model, tmp_path / "b.safetensors", "lenet5-bwn", resolve_config("lenet5-bwn"))
    out = tmp_path / "b.nsk"
    rep = pipeline.compress_checkpoint(ckpt, out, load_recipe("binary", "lenet5-bwn"), data=tiny_dataset,
                                       progress=False)
    model.eval()
    assert rep["top1_after"] == pytest.approx(evaluate(model, tiny_dataset), abs=0.02)
    arch = read_archive(out)
    binary = [r for r in arch.records if r["encoding"] == "binary"]
    assert {r["name"] for r in binary} == {"conv2.weight", "ip1.weight"}
    stored = sum(r["bytes"] for r in binary)
    assert 4 * sum(r["params"] for r in binary) / stored >= 31
    with pytest.raises(ConfigError, match="binary layers"):
        pipeline.compress_checkpoint(trained_plain(tmp_path), tmp_path / "x.nsk", load_recipe("binary"),
                                     data=None, progress=False)


def trained_plain(tmp_path):
    return save_checkpoint(build_model("lenet5"), tmp_path / "plain.safetensors", "lenet5", resolve_config("lenet5"))


def test_layer_pattern_that_matches_nothing(trained, tmp_path):
    recipe = recipe_from_dict({"stages": ["prune", "encode"], "prune": {"layers": {"fc9": 0.5}}})
    with pytest.raises(ConfigError, match="'fc9' matches no compressible tensor"):
        pipeline.compress_checkpoint(trained, tmp_path / "x.nsk", recipe, data=None, retrain=False, progress=False)


# ---------------------------------------------------------------- honest sizes, epochs scale, progress
class BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32)

    def forward(self, x):
        return self.bn(self.fc(x))


def _ctx(**kw):
    from nnshrink.stages import Context

    return Context(progress=False, **kw)


def test_original_bytes_count_each_tensors_own_dtype():
    model = BNNet()
    rep = pipeline.compress_model(model, recipe_from_dict({"stages": ["encode"]}), _ctx(), metadata={"model": None})
    # num_batches_tracked is int64: 8 bytes, not 4
    floats = sum(t.numel() for n, t in model.state_dict().items() if n != "bn.num_batches_tracked")
    assert rep.report["original_bytes"] == 4 * floats + 8


def test_an_output_larger_than_its_input_is_a_warning():
    rep = pipeline.compress_model(torch.nn.Linear(2, 2), recipe_from_dict({"stages": ["encode"]}), _ctx(),
                                  metadata={"model": None}).report
    assert rep["compressed_bytes"] > rep["original_bytes"] and rep["ratio"] < 1
    assert any("larger than the input" in w for w in rep["warnings"])


def test_recipe_scaled_scales_every_retraining():
    recipe = recipe_from_dict({"stages": ["prune", "share", "encode"],
                               "prune": {"rounds": 3, "retrain_epochs": 2, "final_epochs": 6},
                               "share": {"finetune_epochs": 1}})
    half = recipe.scaled(0.5)
    assert (half.prune.retrain_epochs, half.prune.final_epochs, half.share.finetune_epochs) == (1.0, 3.0, 0.5)
    assert half.prune.rounds == 3 and half.share.lr_factor == recipe.share.lr_factor
    assert half.as_dict() != recipe.as_dict()  # a resumed run with another scale is another run
    assert recipe.planned_epochs() == {"prune": 2 * 2 + 6, "share": 1.0}
    # -1 ("same as retrain_epochs") and 0 (no retraining) keep their meaning
    default = recipe_from_dict({"stages": ["prune", "share", "encode"], "share": {"finetune_epochs": 0}}).scaled(3)
    assert default.prune.final_epochs == -1 and default.prune.retrain_epochs == 6 and default.share.finetune_epochs == 0
    # every *_epochs field of every registered stage is scaled
    for name, stage in REGISTRY.items():
        cfg = recipe_from_dict({"stages": [name, "encode"]}).scaled(2)
        base = stage.config()
        for f in fields(base):
            if f.name.endswith("_epochs") and getattr(base, f.name) > 0:
                assert getattr(getattr(cfg, name), f.name) == 2 * getattr(base, f.name)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "2"])
def test_recipe_scaled_refuses_bad_factors(bad):
    with pytest.raises(ConfigError, match="epochs scale must be a finite number > 0"):
        recipe_from_dict(FAST).scaled(bad)


def test_progress_line_per_stage_with_an_estimate(capsys):
    from nnshrink.stages import Context

    calls = []
    ctx = Context(trainer=lambda model, epochs, hints: calls.append(epochs), progress=True)
    pipeline.compress_model(BNNet(), recipe_from_dict(FAST), ctx, metadata={"model": None})
    err = capsys.readouterr().err.splitlines()
    lines = [l for l in err if l.startswith("compress: ")]
    assert [re.sub(r"\d+:\d\d", "T", l) for l in lines] == [
        "compress: stage 1 of 3: prune (elapsed T)",
        "compress: stage 2 of 3: share (elapsed T, about T left)",  # prune's 2 of 3 planned epochs ran
        "compress: stage 3 of 3: encode (elapsed T)",
        "compress: done, 3 stages in T"]
    assert calls == [1, 1, 1]
    pipeline.compress_model(BNNet(), recipe_from_dict(FAST), _ctx(), metadata={"model": None})
    assert "compress:" not in capsys.readouterr().err
