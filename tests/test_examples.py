"""The own-model examples run end to end on a tiny IDX set: train, compress, save, load, evaluate."""

from __future__ import annotations

import importlib

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


def test_float_model_is_cached_between_runs(tiny_idx_dir, tmp_path):
    _, first = run_example("resnet_bn", tiny_idx_dir, tmp_path)
    _, again = run_example("resnet_bn", tiny_idx_dir, tmp_path)
    assert not first["train_cached"] and again["train_cached"]
    assert again["top1_float"] == first["top1_float"]
    _, other = run_example("resnet_bn", tiny_idx_dir, tmp_path, "--subset", "100")
    assert not other["train_cached"]  # trained with other settings: not reused


def test_vit_archive_prunes_and_shares_attention_in_proj(tiny_idx_dir, tmp_path):
    _, res = run_example("tiny_vit", tiny_idx_dir, tmp_path)
    import json

    rows = {r["name"]: r for r in json.loads((tmp_path / "report.json").read_text())["layers"]}
    in_proj = [r for n, r in rows.items() if n.endswith("self_attn.in_proj_weight")]
    assert len(in_proj) == 4
    for r in in_proj:
        assert r["encoding"] == "shared" and r["nonzero"] < r["params"]


def test_bad_subset_is_a_clear_error(tiny_idx_dir, tmp_path):
    from nnshrink.errors import ConfigError

    with pytest.raises(ConfigError, match="subset must be >= 1 image; got 0"):
        run_example("resnet_bn", tiny_idx_dir, tmp_path, "--subset", "0")
