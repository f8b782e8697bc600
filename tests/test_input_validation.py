"""Input validation (issue 13): bad values are one clear line and exit 2, before any work.

One regression test per item; the CLI runs in-process (``cli.main``) to keep them fast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_images, write_idx
from nnshrink.checkpoint import save_checkpoint
from nnshrink.cli import main
from nnshrink.data import Dataset
from nnshrink.errors import CheckpointError, ConfigError, DataError
from nnshrink.models import build_model, resolve_config
from nnshrink.train import TrainConfig, evaluate, fit


def cli(capsys, *args) -> tuple[int, str]:
    """(exit code, stderr) of ``nnshrink ARGS``; a traceback fails the test by itself."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def ckpt(tmp_path):
    """A small nnshrink checkpoint (lenet300, untrained)."""
    torch.manual_seed(0)
    return save_checkpoint(build_model("lenet300"), tmp_path / "base.safetensors", "lenet300",
                           resolve_config("lenet300"))


def idx_folder(path, train_n=64, test_n=32, side=28, max_label=9):
    path.mkdir()
    for prefix, n, seed in (("train", train_n, 1), ("t10k", test_n, 2)):
        images, labels = make_images(max(n, 1), seed=seed)
        images = np.resize(images, (n, side, side))
        labels = np.minimum(labels[:n], max_label)
        if n:
            labels[0] = max_label
        write_idx(path / f"{prefix}-images-idx3-ubyte", images)
        write_idx(path / f"{prefix}-labels-idx1-ubyte", labels)
    return path


# ---------------------------------------------------------------- 4 / 16: recipe value types
def test_recipe_string_for_a_bool_is_refused(capsys, ckpt, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('stages = ["prune", "encode"]\n[encode]\nhalf_dense = "false"\n')
    code, err = cli(capsys, "compress", ckpt, "--recipe", recipe, "--no-retrain", "-o", tmp_path / "o.nsk")
    one_line_error(code, err, "half_dense", "'false'", "bool")
    assert not (tmp_path / "o.nsk").exists()


# ---------------------------------------------------------------- 5: non-finite hyper-parameters
@pytest.mark.parametrize("kw", [dict(weight_decay=math.nan), dict(lr=math.inf), dict(epochs=math.inf),
                                dict(l1=math.inf)])
def test_train_config_refuses_non_finite(kw):
    name = next(iter(kw))
    with pytest.raises(ConfigError, match=name):
        TrainConfig(**kw)


@pytest.mark.parametrize("flag", ["--weight-decay", "--lr", "--l2"])
def test_train_flags_refuse_non_finite(capsys, tmp_path, flag):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "lenet300", flag, "nan", "-o", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "finite" in err
    assert len(err.strip().splitlines()) == 1 and flag in err  # one line naming the flag, no usage block


@pytest.mark.parametrize("argv", [["train", "--model", "lenet5", "--epochs", "abc", "-o", "x"], ["compress"],
                                  ["no-such-command"], ["inspect", "a.nsk", "--bogus"]])
def test_flag_errors_are_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "error:" in err, err


def test_checkpoint_of_nans_is_refused(tmp_path):
    model = build_model("lenet300")
    with torch.no_grad():
        model.ip1.weight[0, 0] = math.nan
    out = tmp_path / "nan.safetensors"
    with pytest.raises(CheckpointError, match="ip1.weight"):
        save_checkpoint(model, out, "lenet300", resolve_config("lenet300"))
    assert not out.exists()
    save_checkpoint(model, out, "lenet300", resolve_config("lenet300"), allow_nonfinite=True)
    assert out.is_file()


# ---------------------------------------------------------------- 6: lossless post-training path
def _every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {"scalar": torch.tensor(3.25), "scalar_i": torch.tensor(7, dtype=torch.int64),
           "empty": torch.zeros(0, 3)}
    for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        name = str(dt).split(".")[1]
        out[f"{name}_small"] = torch.randn(5, 3, generator=g).to(dt)
        out[f"{name}_big"] = torch.randn(64, 48, generator=g).to(dt)
    for dt in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        out[str(dt).split(".")[1]] = torch.randint(-100 if dt != torch.uint8 else 0, 100, (40, 30),
                                                   generator=g).to(dt)
    out["bool"] = torch.rand(40, 30, generator=g) > 0.5
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def test_no_retrain_roundtrip_keeps_every_tensor_bit_for_bit(capsys, tmp_path):
    tensors = _every_dtype()
    src, nsk, back = tmp_path / "in.safetensors", tmp_path / "o.nsk", tmp_path / "back.safetensors"
    save_file(tensors, str(src))
    assert main(["compress", str(src), "--no-retrain", "-o", str(nsk)]) == 0
    assert main(["decompress", str(nsk), "-o", str(back)]) == 0
    got = load_file(str(back))
    assert sorted(got) == sorted(tensors)
    for name, t in tensors.items():
        g = got[name]
        assert (g.dtype, g.shape) == (t.dtype, t.shape), name
        assert torch.equal(_bits(g), _bits(t)), name


def test_lossy_settings_keep_small_and_integer_tensors_exact(tmp_path):
    from nnshrink.post_training import compress_tensors
    from nnshrink.format import read_archive

    tensors = _every_dtype()
    src, nsk = tmp_path / "in.safetensors", tmp_path / "o.nsk"
    save_file(tensors, str(src))
    compress_tensors(src, nsk, sparsity=0.5, bits=4)
    got = read_archive(nsk).dense_state()
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() >= 1024:
            assert got[name].dtype == torch.float32 and got[name].shape == t.shape  # compressed: float32
        else:
            assert got[name].dtype == t.dtype and torch.equal(_bits(got[name]), _bits(t)), name


# ---------------------------------------------------------------- 13: devices
@pytest.mark.parametrize("device, word", [("cuda", "CUDA"), ("bogus", "bogus"), ("cuda:abc", "cuda:abc")])
def test_bad_device_is_one_line(capsys, ckpt, tmp_path, device, word):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA present")
    data = idx_folder(tmp_path / "d")
    code, err = cli(capsys, "eval", ckpt, "--dataset", "idx", "--data-dir", data, "--device", device)
    one_line_error(code, err, word)


def test_sensitivity_checks_the_device_before_the_model_moves(capsys, ckpt, tmp_path):
    data = idx_folder(tmp_path / "d")
    code, err = cli(capsys, "sensitivity", ckpt, "--dataset", "idx", "--data-dir", data, "--device", "cuda:7")
    one_line_error(code, err, "cuda:7")


def test_train_checks_the_device_before_the_data(capsys, tmp_path):
    code, err = cli(capsys, "train", "--model", "lenet300", "--device", "cuda:abc", "--dataset", "idx",
                    "--data-dir", tmp_path / "missing", "-o", tmp_path / "m.safetensors")
    one_line_error(code, err, "cuda:abc")


# ---------------------------------------------------------------- 14: NNSHRINK_THREADS, --epochs inf
@pytest.mark.parametrize("value", ["\u00b2", "1" + "0" * 20])
def test_bad_thread_counts(capsys, monkeypatch, value):
    monkeypatch.setenv("NNSHRINK_THREADS", value)
    code, err = cli(capsys, "profile", "--model", "lenet5")
    one_line_error(code, err, "NNSHRINK_THREADS")


def test_epochs_inf_is_refused_before_training(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "lenet300", "--epochs", "inf", "-o", str(tmp_path / "m.safetensors")])
    assert exc.value.code == 2 and "--epochs" in capsys.readouterr().err


# ---------------------------------------------------------------- 15: data that does not fit the model
def _data(side=28, max_label=9, n=16) -> Dataset:
    images, labels = make_images(n)
    x = torch.from_numpy(np.resize(images, (n, 1, side, side)).astype(np.float32) / 255)
    y = torch.from_numpy(np.minimum(labels, max_label).astype(np.int64))
    y[0] = max_label
    return Dataset("t", x, y, x.clone(), y.clone())


def test_images_of_the_wrong_size_are_named():
    with pytest.raises(DataError, match=r"\(1, 32, 32\)"):
        evaluate(build_model("lenet5"), _data(side=32))
    with pytest.raises(DataError, match=r"\(1, 32, 32\)"):
        fit(build_model("lenet300"), _data(side=32), TrainConfig(epochs=1), progress=False)


def test_labels_beyond_the_models_classes_are_named():
    from nnshrink.train import check_fits

    model = build_model("lenet300")
    with pytest.raises(DataError, match="label 12.*10 classes"):
        evaluate(model, _data(max_label=12))
    with pytest.raises(DataError, match="label 12.*10 classes"):
        check_fits(model, _data(max_label=12))
    check_fits(model, _data())


def test_eval_of_a_model_on_32x32_images_is_one_line(capsys, ckpt, tmp_path):
    data = idx_folder(tmp_path / "d32", side=32)
    code, err = cli(capsys, "eval", ckpt, "--dataset", "idx", "--data-dir", data)
    one_line_error(code, err, "(1, 32, 32)")


# ---------------------------------------------------------------- 18: ignored inputs
@pytest.fixture
def plain(tmp_path):
    src = tmp_path / "plain.safetensors"
    save_file({"w": torch.randn(64, 32), "b": torch.zeros(64)}, str(src))
    return src


@pytest.mark.parametrize("extra, word", [(["--recipe", "prune"], "--recipe"),
                                         (["--dataset", "fashion-mnist"], "--dataset"),
                                         (["--device", "cpu:0"], "--device")])
def test_flags_plain_tensors_ignore_are_refused(capsys, plain, tmp_path, extra, word):
    code, err = cli(capsys, "compress", plain, "--no-retrain", *extra, "-o", tmp_path / "o.nsk")
    one_line_error(code, err, word)
    assert not (tmp_path / "o.nsk").exists()


def test_device_without_retraining_or_data_is_refused(capsys, ckpt, tmp_path):
    code, err = cli(capsys, "compress", ckpt, "--no-retrain", "--device", "cpu:0", "-o", tmp_path / "o.nsk")
    one_line_error(code, err, "--device", "--no-retrain")


def test_encode_layer_pattern_that_matches_nothing(capsys, ckpt, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('stages = ["prune", "encode"]\n[encode.layers]\n"conv*" = 4\n')
    code, err = cli(capsys, "compress", ckpt, "--recipe", recipe, "--no-retrain", "-o", tmp_path / "o.nsk")
    one_line_error(code, err, "'conv*'", "matches no compressible tensor")
    assert not list(tmp_path.glob("o.nsk*"))  # nothing left that blocks the corrected rerun


# ---------------------------------------------------------------- 20: error lines of sane length
def test_error_line_is_cut_and_single(capsys, tmp_path):
    from nnshrink.cli import one_line

    code, err = cli(capsys, "train", "--model", "x" * 5000, "-o", tmp_path / "m.safetensors")
    line = one_line_error(code, err, "unknown model")
    assert len(line) <= 500 and line.endswith("...")
    assert one_line("bad value:\n  two\nlines") == "bad value: two lines"


# ---------------------------------------------------------------- 21: empty test split
def test_eval_on_an_empty_test_split(capsys, ckpt, tmp_path):
    data = idx_folder(tmp_path / "empty", test_n=0)
    code, err = cli(capsys, "eval", ckpt, "--dataset", "idx", "--data-dir", data)
    one_line_error(code, err, "test split", "empty")


def test_training_on_an_empty_train_split():
    empty = _data()
    empty = Dataset("e", empty.train_x[:0], empty.train_y[:0], empty.test_x, empty.test_y)
    with pytest.raises(DataError, match="train split.*empty"):
        fit(build_model("lenet300"), empty, TrainConfig(epochs=1), progress=False)
