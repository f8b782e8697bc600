"""The real `nnshrink` command, run as a user runs it (a subprocess)."""

import json
import subprocess
import sys

import pytest

NNSHRINK = [sys.executable, "-m", "nnshrink"]


def run(*args, ok=True):
    proc = subprocess.run([*NNSHRINK, *map(str, args)], capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_train_then_eval_json(tiny_idx_dir, tmp_path):
    ckpt = tmp_path / "base.safetensors"
    run("train", "--model", "lenet300", "--dataset", "idx", "--data-dir", tiny_idx_dir, "--epochs", 10,
        "--quiet", "-o", ckpt)
    assert ckpt.is_file()
    out = run("eval", ckpt, "--dataset", "idx", "--data-dir", tiny_idx_dir, "--json").stdout
    report = json.loads(out)
    assert report["model"] == "lenet300" and 0.5 < report["top1"] <= 1.0


def test_profile_json_totals():
    report = json.loads(run("profile", "--model", "lenet5", "--json").stdout)
    assert report["total_params"] == 431_080
    assert report["total_macs"] == 288_000 + 1_600_000 + 400_000 + 5_000


@pytest.mark.parametrize("args, words", [
    (["train", "--model", "nope", "-o", "x.safetensors"], ["unknown model 'nope'", "lenet300"]),
    (["train", "--model", "lenet5", "-o", "/no/such/dir/x.safetensors"], ["does not exist"]),
    (["eval", "missing.safetensors"], ["no such file"]),
    (["train", "--model", "lenet5", "--dataset", "imagenet", "-o", "x.safetensors"], ["unknown dataset"]),
    (["profile"], ["--model"]),
])
def test_bad_input_is_one_clear_line(args, words, tmp_path):
    proc = subprocess.run([*NNSHRINK, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr


def test_missing_dataset_message(tmp_path):
    proc = subprocess.run([*NNSHRINK, "train", "--model", "lenet5", "--dataset", "mnist", "--data-dir",
                           tmp_path / "none", "-o", tmp_path / "x.safetensors"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "looked in" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.safetensors").exists()
