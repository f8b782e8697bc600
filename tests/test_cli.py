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


# ---------------------------------------------------------------- honest numbers, quiet pipes, progress
@pytest.fixture
def ckpt(tmp_path):
    from nnshrink.checkpoint import save_checkpoint
    from nnshrink.models import build_model, resolve_config

    return save_checkpoint(build_model("lenet300"), tmp_path / "base.safetensors", "lenet300",
                           resolve_config("lenet300"))


def test_inspect_into_a_reader_that_closes_early_exits_quietly(tmp_path):
    import numpy as np

    from nnshrink.compressed import DenseTensor
    from nnshrink.format import write_archive

    path = tmp_path / "many.nsk"  # ~1500 table lines: far more than a pipe holds
    write_archive(path, {f"layer{i}.weight": DenseTensor(np.zeros(3, np.float32)) for i in range(1500)},
                  {"model": None, "config": {}})
    proc = subprocess.Popen([*NNSHRINK, "inspect", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(str(path).encode())
    proc.stdout.close()  # like `| head -1`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 141)
    assert err == ""


def test_inspect_names_the_users_class(tmp_path):
    import torch

    import nnshrink

    path = tmp_path / "own.nsk"
    nnshrink.compress(torch.nn.Sequential(torch.nn.Linear(64, 64)), "prune", progress=False).save(path)
    out = run("inspect", path).stdout
    assert out.splitlines()[0] == f"{path}: class torch.nn.modules.container.Sequential"
    assert "None" not in out.splitlines()[0]


def test_post_training_sizes_are_the_tensors_real_bytes(tmp_path):
    import torch
    from safetensors.torch import save_file

    src = tmp_path / "t.safetensors"
    save_file({"steps": torch.arange(1000, dtype=torch.int64), "w": torch.ones(64, 64, dtype=torch.float16)}, src)
    out, rj = tmp_path / "t.nsk", tmp_path / "r.json"
    p = run("compress", src, "-o", out, "--no-retrain", "--json", rj)
    rep = json.loads(rj.read_text())
    assert rep["original_bytes"] == 8 * 1000 + 2 * 64 * 64  # not 4 bytes per element
    # lossless storage plus a header is larger than the input: said, never "1.0x"
    assert rep["compressed_bytes"] > rep["original_bytes"]
    assert any("larger than the input" in w for w in rep["warnings"])
    assert "LARGER than the input" in p.stdout and "(1.0x)" not in p.stdout
    assert "warning: the output" in p.stderr  # warnings go to stderr (stdout stays clean with --json -)
    layers = {l["name"]: l for l in json.loads(run("inspect", out, "--json").stdout)["layers"]}
    assert layers["steps"]["dtype"] == "int64" and layers["steps"]["percent_of_float32"] is None
    assert layers["steps"]["original_bytes"] == 8000 and layers["steps"]["percent_of_original"] == 100.0
    assert layers["w"]["original_bytes"] == 2 * 64 * 64 and layers["w"]["percent_of_float32"] == 50.0


@pytest.mark.parametrize("value", ["nan", "0", "-1", "inf"])
def test_epochs_scale_is_validated(value, ckpt, tmp_path):
    p = run("compress", ckpt, "-o", tmp_path / "x.nsk", f"--epochs-scale={value}", ok=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert f"--epochs-scale must be a finite number > 0; got {float(value)!r}" in p.stderr


def test_epochs_scale_refused_where_nothing_retrains(ckpt, tmp_path):
    p = run("compress", ckpt, "-o", tmp_path / "x.nsk", "--epochs-scale", "0.5", "--no-retrain", ok=False)
    assert p.returncode == 2 and "nothing retrains" in p.stderr


def test_compress_progress_and_epochs_scale(ckpt, tiny_idx_dir, tmp_path):
    rec = tmp_path / "fast.toml"
    rec.write_text('stages = ["prune", "share", "encode"]\n[prune]\nsparsity = 0.8\nrounds = 2\n'
                   'retrain_epochs = 0.5\nfinal_epochs = 1\n[share]\nfc_bits = 4\nfinetune_epochs = 0.5\n')
    rj = tmp_path / "r.json"
    p = run("compress", ckpt, "-o", tmp_path / "c.nsk", "--recipe", rec, "--dataset", "idx", "--data-dir",
            tiny_idx_dir, "--epochs-scale", "0.5", "--json", rj)
    recipe = json.loads(rj.read_text())["recipe"]
    assert (recipe["prune"]["retrain_epochs"], recipe["prune"]["final_epochs"],
            recipe["share"]["finetune_epochs"]) == (0.25, 0.5, 0.25)
    lines = [l for l in p.stderr.splitlines() if l.startswith("compress: ")]
    assert [l.split(" (")[0] for l in lines[:3]] == ["compress: stage 1 of 3: prune", "compress: stage 2 of 3: share",
                                                     "compress: stage 3 of 3: encode"]
    assert "about" in lines[1] and lines[-1].startswith("compress: done, 3 stages in ")
    quiet = run("compress", ckpt, "-o", tmp_path / "q.nsk", "--no-retrain", "--quiet")
    assert "compress:" not in quiet.stderr


@pytest.mark.parametrize("flags, msg", [
    (["--target-ratio", "1"], "prune.target_ratio must be a finite number > 1; got 1.0"),
    (["--target-ratio", "40", "--sparsity", "0.9"], "--target-ratio 40 chooses the sparsities; do not also give"),
    (["--target-ratio", "40", "--no-retrain"], "needs a metric: give --dataset NAME"),
    (["--target-ratio", "40", "--recipe", "share"], "recipe 'share' does not prune"),
])
def test_target_ratio_flag_is_validated(flags, msg, ckpt, tmp_path):
    p = run("compress", ckpt, "-o", tmp_path / "x.nsk", *flags, ok=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and msg in p.stderr
    assert not (tmp_path / "x.nsk").exists()


def test_seed_and_target_ratio_refused_for_plain_tensor_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    src = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(64, 64)}, src)
    p = run("compress", src, "-o", tmp_path / "t.nsk", "--no-retrain", "--seed", "3", "--target-ratio", "9", ok=False)
    assert p.returncode == 2 and "--seed, --target-ratio given" in p.stderr
