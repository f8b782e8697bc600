"""Output safety (issue 13): no file the user had is replaced or damaged without --force, two
runs never write one output, odd inputs and outputs get one clear line (exit 2), and a failed
run leaves nothing that blocks the corrected rerun. One regression test (or group) per item."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from nnshrink import pipeline
from nnshrink.checkpoint import save_checkpoint
from nnshrink.cli import main
from nnshrink.compressed import DenseTensor
from nnshrink.errors import ConfigError, DataError, OutputError
from nnshrink.format import write_archive
from nnshrink.models import build_model, resolve_config
from nnshrink.recipes import recipe_from_dict
from nnshrink.workdir import work_dir

PRUNE_ONLY = recipe_from_dict({"stages": ["prune", "encode"], "prune": {"sparsity": 0.5, "retrain_epochs": 0}})


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "nnshrink", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(build_model("lenet300"), tmp_path / "base.safetensors", "lenet300",
                           resolve_config("lenet300"))


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "a.nsk"
    write_archive(path, {"w": DenseTensor(np.arange(6, dtype=np.float32).reshape(2, 3))}, {"model": None})
    return path


@pytest.fixture
def device_node(tmp_path):
    """A character device (like /dev/null: 1,3) inside tmp_path, so a bug cannot hit the real one."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here")
    return node


def still_a_device(node) -> bool:
    return stat.S_ISCHR(os.lstat(node).st_mode)


def no_temp_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ item 1: only regular files
def test_item1_device_output_refused_even_with_force(capsys, archive, device_node, tmp_path):
    one_line_error(*cli(capsys, "decompress", archive, "-o", device_node, "--force")[::2], "character device")
    assert still_a_device(device_node)
    link = tmp_path / "link"
    link.symlink_to(device_node)
    one_line_error(*cli(capsys, "decompress", archive, "-o", link, "--force")[::2], "character device", "symlink")
    assert still_a_device(device_node) and link.is_symlink()


def test_item1_fifo_output_refused_by_the_writer_itself(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="named pipe"):
        write_archive(fifo, {"w": DenseTensor(np.zeros(3, np.float32))}, {"model": None})
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and no_temp_files(tmp_path)


def test_item1_symlink_to_a_regular_file_is_written_through(archive, tmp_path):
    real = tmp_path / "real.safetensors"
    real.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(real)
    assert main(["decompress", str(archive), "-o", str(link), "--force"]) == 0
    assert link.is_symlink() and real.stat().st_size > 3


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied")])
def test_item1_write_failure_is_one_line_old_file_intact(capsys, archive, tmp_path, monkeypatch, code, words):
    import safetensors.torch

    out = tmp_path / "dense.safetensors"
    out.write_bytes(b"the user's file")

    def failing_save(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    one_line_error(*cli(capsys, "decompress", archive, "-o", out, "--force")[::2], words, "unchanged")
    assert out.read_bytes() == b"the user's file" and no_temp_files(tmp_path)


def test_item1_rust_writer_disk_full_is_one_line(capsys, archive, tmp_path, monkeypatch):
    """safetensors reports ENOSPC as its own exception with '(os error 28)' in the text."""
    import safetensors.torch

    def failing_save(state, path, metadata=None):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    one_line_error(*cli(capsys, "decompress", archive, "-o", tmp_path / "d.safetensors")[::2], "no space left")
    assert no_temp_files(tmp_path) and not (tmp_path / "d.safetensors").exists()


# ------------------------------------------------------------------ item 2: --resume is not --force
def test_item2_resume_does_not_imply_force(capsys, ckpt, tmp_path):
    out = tmp_path / "other.nsk"
    out.write_bytes(b"an unrelated archive")
    one_line_error(*cli(capsys, "compress", ckpt, "-o", out, "--resume", "--no-retrain", "--recipe", "prune")[::2],
                   "--force")
    assert out.read_bytes() == b"an unrelated archive"


# ------------------------------------------------------------------ item 3: every writer has --force
NO_DATA = ["--dataset", "idx", "--data-dir", "/nonexistent-nnshrink-data"]


@pytest.mark.parametrize("make_args", [
    lambda t, c, a: ["train", "--model", "lenet300", *NO_DATA, "-o", t / "old"],
    lambda t, c, a: ["train", "--model", "lenet300", *NO_DATA, "-o", t / "new", "--json", t / "old"],
    lambda t, c, a: ["factorize", c, *NO_DATA, "-o", t / "old"],
    lambda t, c, a: ["sensitivity", c, *NO_DATA, "--plot", t / "old"],
    lambda t, c, a: ["sensitivity", c, *NO_DATA, "--json", t / "old"],
    lambda t, c, a: ["bench", "--model", "lenet300", "--repeats", "3", "--json", t / "old"],
    lambda t, c, a: ["decompress", a, "-o", t / "old"],
    lambda t, c, a: ["compress", c, "-o", t / "new.nsk", "--no-retrain", "--plots", t / "old"],
    lambda t, c, a: ["compress", c, "-o", t / "new.nsk", "--no-retrain", "--json", t / "old"],
    lambda t, c, a: ["eval", c, *NO_DATA, "--json", t / "old"],
    lambda t, c, a: ["inspect", a, "--json", t / "old"],
    lambda t, c, a: ["profile", "--model", "lenet5", "--json", t / "old"],
], ids=["train", "train-json", "factorize", "sensitivity-plot", "sensitivity-json", "bench-json", "decompress",
        "compress-plots", "compress-json", "eval-json", "inspect-json", "profile-json"])
def test_item3_no_command_replaces_a_file_without_force(capsys, ckpt, archive, tmp_path, make_args):
    old = tmp_path / "old"
    old.write_bytes(b"keep me")
    # the missing dataset would fail later: the refusal comes first, before any work
    one_line_error(*cli(capsys, *make_args(tmp_path, ckpt, archive))[::2], "exists", "--force")
    assert old.read_bytes() == b"keep me" and not (tmp_path / "new.nsk").exists()


def test_item3_demo_refuses_before_training(capsys, tmp_path):
    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    (out_dir / "lenet300.nsk").write_bytes(b"last week's archive")
    one_line_error(*cli(capsys, "demo", "--models", "lenet300", "--out-dir", out_dir, *NO_DATA)[::2],
                   "lenet300.nsk", "--force")
    assert (out_dir / "lenet300.nsk").read_bytes() == b"last week's archive"


def test_item3_plots_in_missing_folder_fail_before_compressing(capsys, ckpt, tmp_path):
    out = tmp_path / "c.nsk"
    one_line_error(*cli(capsys, "compress", ckpt, "-o", out, "--no-retrain", "--recipe", "prune",
                        "--plots", tmp_path / "missing" / "w.png")[::2], "does not exist")
    assert not out.exists() and not (tmp_path / "c.nsk.work").exists()
    with pytest.raises(OutputError, match="does not exist"):
        pipeline.compress_checkpoint(ckpt, out, PRUNE_ONLY, data=None, retrain=False, progress=False,
                                     plots=tmp_path / "missing" / "w.png")
    assert not out.exists()


def test_json_flag_stdout_file_and_force(capsys, archive, tmp_path):
    rc, out, _ = cli(capsys, "inspect", archive, "--json")  # the old store_true spelling still works
    assert rc == 0 and json.loads(out)["layers"][0]["name"] == "w"
    dest = tmp_path / "r.json"
    rc, out, _ = cli(capsys, "profile", "--model", "lenet5", "--json", dest)
    assert rc == 0 and json.loads(dest.read_text())["total_params"] == 431_080 and "{" not in out
    dest.write_text("{}")
    assert cli(capsys, "profile", "--model", "lenet5", "--json", dest)[0] == 2
    assert cli(capsys, "profile", "--model", "lenet5", "--json", dest, "--force")[0] == 0
    assert json.loads(dest.read_text())["total_params"] == 431_080


# ------------------------------------------------------------------ item 7: one run per output
HOLDER = textwrap.dedent("""
    import sys, time
    from nnshrink.workdir import work_dir
    with work_dir(sys.argv[1], {"run": 1}) as w:
        (w / "1-prune.json").write_text("{}")
        print("ready", flush=True)
        time.sleep(120)
""")


def test_item7_second_run_and_resume_refused_while_first_runs(ckpt, tmp_path):
    out = tmp_path / "m.nsk"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "ready"
        for extra in ([], ["--resume"]):
            p = run_cli("compress", ckpt, "-o", out, "--no-retrain", "--recipe", "prune", *extra)
            one_line_error(p.returncode, p.stderr, "another nnshrink run", f"pid {first.pid}")
        assert not out.exists() and (tmp_path / "m.nsk.work" / "1-prune.json").is_file()
    finally:
        first.kill()
        first.wait()


def test_item7_post_training_write_is_refused_while_another_run_writes(tmp_path):
    from safetensors.torch import save_file

    plain = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(plain))
    out = tmp_path / "w.nsk"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "ready"
        p = run_cli("compress", plain, "-o", out, "--no-retrain", "--bits", "6")
        one_line_error(p.returncode, p.stderr, "another nnshrink run", f"pid {first.pid}")
        assert not out.exists()
    finally:
        first.kill()
        first.wait()
    p = run_cli("compress", plain, "-o", out, "--no-retrain", "--bits", "6")
    assert p.returncode == 2 and "--resume" in p.stderr  # the dead run's finished stage is not lost silently
    shutil.rmtree(tmp_path / "w.nsk.work")
    p = run_cli("compress", plain, "-o", out, "--no-retrain", "--bits", "6")
    assert p.returncode == 0 and out.is_file() and not (tmp_path / "w.nsk.work").exists(), p.stderr


def test_item7_dead_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "m.nsk"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "ready"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    with pytest.raises(ConfigError, match="--resume"):
        with work_dir(out, {"run": 1}):
            pass
    with work_dir(out, {"run": 1}, resume=True) as w:
        assert (w / "1-prune.json").is_file()
        assert (w / "lock").read_text() == str(os.getpid())
    assert not w.exists()


# ------------------------------------------------------------------ item 12: -o a directory
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_item12_output_directory_is_one_line(capsys, archive, ckpt, tmp_path, force):
    folder = tmp_path / "adir"
    folder.mkdir()
    one_line_error(*cli(capsys, "decompress", archive, "-o", folder, *force)[::2], "is a directory")
    one_line_error(*cli(capsys, "compress", ckpt, "-o", folder, "--no-retrain", *force)[::2], "is a directory")
    assert folder.is_dir() and not list(folder.iterdir())


# ------------------------------------------------------------------ item 17: odd inputs
@pytest.fixture
def alarm():
    """Fail a test that blocks (opening a FIFO waits for a writer) instead of hanging the suite."""
    def timeout(*_):
        raise TimeoutError("blocked reading the input")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
@pytest.mark.parametrize("command", [["eval"], ["inspect"], ["decompress", "-o", "x.safetensors"],
                                     ["compress", "-o", "x.nsk", "--no-retrain"], ["sensitivity"]])
def test_item17_odd_input_says_what_it_is_and_never_hangs(capsys, alarm, tmp_path, kind, command):
    if kind == "directory":
        path, words = tmp_path, "is a directory"
    elif kind == "fifo":
        path, words = tmp_path / "pipe", "named pipe"
        os.mkfifo(path)
    else:
        path, words = "/dev/zero", "character device"
    cmd = [command[0], path, *command[1:]]
    cmd = [str(tmp_path / a) if a.startswith("x.") else a for a in map(str, cmd)]
    rc, _, err = cli(capsys, *cmd)
    one_line_error(rc, err, words)
    assert "no such file" not in err


def test_item17_data_files_use_the_same_check(alarm, tmp_path):
    from nnshrink.data import read_idx

    os.mkfifo(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="named pipe"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="is a directory"):
        read_idx(tmp_path)


# ------------------------------------------------------------------ item 19: nothing blocks the rerun
def test_item19_failed_run_before_any_stage_leaves_no_work_folder(ckpt, tmp_path, monkeypatch):
    out = tmp_path / "m.nsk"

    def broken(*a, **k):
        raise ConfigError("stage failed")

    from dataclasses import replace

    from nnshrink import stages

    monkeypatch.setitem(stages.REGISTRY, "prune", replace(stages.get_stage("prune"), apply=broken))
    with pytest.raises(ConfigError, match="stage failed"):
        pipeline.compress_checkpoint(ckpt, out, PRUNE_ONLY, data=None, retrain=False, progress=False)
    assert not (tmp_path / "m.nsk.work").exists()
    monkeypatch.undo()
    rep = pipeline.compress_checkpoint(ckpt, out, PRUNE_ONLY, data=None, retrain=False, progress=False)
    assert rep["compressed_bytes"] == out.stat().st_size


def test_item19_killed_run_without_finished_stage_does_not_block(ckpt, tmp_path):
    out = tmp_path / "m.nsk"
    work = tmp_path / "m.nsk.work"
    work.mkdir()
    (work / "run.json").write_text('{"from": "a run killed in its first stage"}')
    (work / "lock").write_text("999999")
    pipeline.compress_checkpoint(ckpt, out, PRUNE_ONLY, data=None, retrain=False, progress=False)
    assert out.is_file() and not work.exists()


def test_item19_stale_temp_files_are_removed_by_the_next_write(ckpt, tmp_path):
    from nnshrink.io_utils import atomic_write_bytes

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "m.nsk"
    stale = [tmp_path / f".m.nsk.{dead.pid}.k1ll3d00.tmp", tmp_path / ".m.nsk.abcd1234.tmp"]
    live = tmp_path / f".m.nsk.{os.getpid()}.wr1t1ng0.tmp"
    other = tmp_path / f".other.nsk.{dead.pid}.k1ll3d00.tmp"
    for p in [*stale, live, other]:
        p.write_bytes(b"half")
    atomic_write_bytes(out, b"whole")
    assert out.read_bytes() == b"whole"
    assert not any(p.exists() for p in stale) and live.exists() and other.exists()
