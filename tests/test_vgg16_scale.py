"""VGG-16 (138M parameters) post-training compress + decompress stays under 3x its dense
size in peak memory (benchmarks/vgg16_scale.py; minutes and ~1.5 GB: slow)."""

import importlib.util
from pathlib import Path

import pytest


@pytest.mark.slow
def test_vgg16_compress_decompress_peak_memory(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vgg16_scale.py"
    spec = importlib.util.spec_from_file_location("vgg16_scale", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--work", str(tmp_path)])
    assert res["decompressed_matches_keys_and_shapes"]
    assert res["peak_rss_x_dense"] < 3.0, res["peak_rss_x_dense"]
    assert res["ratio"] > 10
