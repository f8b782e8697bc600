"""`nnshrink compress` under torchrun when something goes wrong: each rank is its own
``python -m nnshrink`` process with the environment torchrun would give it.

- a global batch size the ranks cannot share: every rank stops with one line naming
  both numbers, before any work (no work folder is left);
- a rank that dies in the middle of retraining (the model's own code exits on rank 1,
  as a killed process would): the survivor stops with a clear error, no archive or
  temp file is left, the work folder keeps the finished stage, and ``--resume``
  reaches the same masks and codebooks as one uninterrupted process;
- a rank that stops answering: the survivor gives up after ``NNSHRINK_DIST_TIMEOUT``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_ddp_pipeline import FACTORY as PIPELINE_FACTORY
from test_ddp_pipeline import RECIPE

ROOT = Path(__file__).resolve().parents[1]

# the model dies on demand; the data and the recipe are test_ddp_pipeline's
FACTORY = '''
import os
import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Sequential):
    """On rank $DIE_RANK the $DIE_AT-th training forward exits (or, DIE_HOW=hang, sleeps)."""

    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(784, 48), nn.ReLU(), nn.Linear(48, 10))
        self.calls = 0

    def forward(self, x):
        if self.training and "DIE_RANK" in os.environ and os.environ["DIE_RANK"] == os.environ.get("RANK"):
            self.calls += 1
            if self.calls == int(os.environ["DIE_AT"]):
                if os.environ.get("DIE_HOW") == "hang":
                    time.sleep(600)
                os._exit(3)
        return super().forward(x)


def build():
    torch.manual_seed(0)
    return Net()


''' + PIPELINE_FACTORY[PIPELINE_FACTORY.index("def loaders():"):]

# prune: 2 rounds of 1 epoch = 16 steps of the global batch 128 over 1024 images; the
# 20th training forward of a rank is in the share stage's fine-tuning
DIES_IN_SHARE = "20"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_dir(tmp_path):
    import torch
    from safetensors.torch import save_file

    (tmp_path / "die_factory.py").write_text(FACTORY)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    sys.path.insert(0, str(tmp_path))
    try:
        import die_factory

        model, (train, _) = die_factory.build(), die_factory.loaders()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for x, y in train:  # a little training: pruning and sharing then have accuracy to keep
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        save_file(model.state_dict(), str(tmp_path / "base.safetensors"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("die_factory", None)
    return tmp_path


def _launch(tmp: Path, world: int, out: str, *extra: str, env: dict | None = None,
            wait_for: tuple[int, ...] | None = None, timeout: float = 240) -> list[tuple[int | None, str]]:
    """Start ``world`` ranks of ``nnshrink compress``; (exit code, stderr) per rank. Ranks
    outside ``wait_for`` (default: all) are killed once those have exited."""
    port = _free_port()
    procs = []
    for rank in range(world):
        rank_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp)]), "NNSHRINK_THREADS": "1",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **(env or {})}
        if world > 1:
            rank_env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        else:
            for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
                rank_env.pop(var, None)
        cmd = [sys.executable, "-m", "nnshrink", "compress", str(tmp / "base.safetensors"), "--model-factory",
               "die_factory:build", "--data-factory", "die_factory:loaders", "--recipe", str(tmp / "recipe.toml"),
               "-o", str(tmp / f"{out}.nsk"), "--json", str(tmp / f"{out}.json"), "--quiet", *extra]
        procs.append(subprocess.Popen(cmd, cwd=tmp, env=rank_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True))
    results: list[tuple[int | None, str]] = [(None, "")] * world
    try:
        for rank in (wait_for if wait_for is not None else range(world)):
            _, err = procs[rank].communicate(timeout=timeout)
            results[rank] = (procs[rank].returncode, err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def _archive(path: Path):
    from nnshrink.format import read_archive

    return read_archive(path).tensors


def _leftovers(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.name.endswith(".tmp"))


@pytest.mark.slow
def test_batch_that_does_not_divide_stops_every_rank_before_any_work(run_dir):
    results = _launch(run_dir, 3, "three")
    for rc, err in results:
        assert rc == 2, err
        assert err.strip().splitlines() == ["nnshrink compress: error: batch size 128 does not divide among 3 ranks "
                                            "(torchrun --nproc_per_node); use a batch size that is a multiple of 3"]
    assert not (run_dir / "three.nsk").exists() and not (run_dir / "three.nsk.work").exists()


@pytest.mark.slow
def test_a_rank_that_dies_mid_run_loses_nothing_and_resume_finishes(run_dir):
    (rc, err), = _launch(run_dir, 1, "single")
    assert rc == 0, err

    results = _launch(run_dir, 2, "broken", env={"DIE_RANK": "1", "DIE_AT": DIES_IN_SHARE})
    assert results[1][0] == 3  # the dead rank
    rc, err = results[0]
    assert rc == 2, err
    assert err.strip().splitlines()[0].startswith(
        "nnshrink compress: error: rank 0 of 2 lost contact with another rank ("), err
    assert "finished stages are kept for --resume" in err
    assert not (run_dir / "broken.nsk").exists() and not (run_dir / "broken.json").exists()
    assert _leftovers(run_dir) == []
    work = run_dir / "broken.nsk.work"
    assert sorted(p.name for p in work.iterdir()) == ["1-prune.json", "1-prune.nsk", "lock", "run.json"]

    results = _launch(run_dir, 2, "broken", "--resume")
    assert [rc for rc, _ in results] == [0, 0], results
    assert not work.exists() and _leftovers(run_dir) == []
    report = json.loads((run_dir / "broken.json").read_text())
    assert [s.get("resumed", False) for s in report["stages"][:2]] == [True, False]
    single, resumed = _archive(run_dir / "single.nsk"), _archive(run_dir / "broken.nsk")
    shared = [n for n, t in single.items() if hasattr(t, "codebook")]
    assert len(shared) == 2
    for name in shared:
        np.testing.assert_array_equal(single[name].mask, resumed[name].mask, err_msg=f"{name}: masks differ")
        np.testing.assert_array_equal(single[name].indices, resumed[name].indices, err_msg=f"{name}: indices")
        np.testing.assert_allclose(single[name].codebook, resumed[name].codebook, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_rank_that_stops_answering_times_out(run_dir):
    results = _launch(run_dir, 2, "hung", env={"DIE_RANK": "1", "DIE_AT": DIES_IN_SHARE, "DIE_HOW": "hang",
                                              "NNSHRINK_DIST_TIMEOUT": "5"}, wait_for=(0,), timeout=120)
    rc, err = results[0]
    assert rc == 2, err
    assert err.strip().splitlines()[0].startswith("nnshrink compress: error: rank 0 of 2 lost contact with another "
                                                  "rank (Timed out"), err
    assert not (run_dir / "hung.nsk").exists() and _leftovers(run_dir) == []
    assert (run_dir / "hung.nsk.work" / "1-prune.json").is_file()


def test_a_bad_timeout_is_a_clear_error(monkeypatch):
    from nnshrink.distributed import _timeout
    from nnshrink.errors import ConfigError

    monkeypatch.setenv("NNSHRINK_DIST_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="NNSHRINK_DIST_TIMEOUT must be a number of seconds > 0; got 'soon'"):
        _timeout()
    monkeypatch.setenv("NNSHRINK_DIST_TIMEOUT", "2.5")
    assert _timeout().total_seconds() == 2.5


def test_lost_peer_follows_the_causes():
    from nnshrink.distributed import _reason, lost_peer
    from nnshrink.errors import StageError

    gloo = RuntimeError("[/src/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                        "[127.0.0.1]:1234. This is typically caused by a remote worker crashing.")
    try:
        try:
            raise gloo
        except RuntimeError as exc:
            raise StageError("stage 'share': fine_tune raised RuntimeError") from exc
    except StageError as outer:
        assert lost_peer(outer) is gloo
    assert _reason(gloo) == "Connection closed by peer [127.0.0.1]:1234"
    assert lost_peer(StageError("stage 'share': fine_tune raised ValueError: bad")) is None


def test_the_trainer_refuses_a_batch_the_ranks_cannot_share_when_built(monkeypatch):
    """The check runs when the run's trainer is made (before the work folder, the first
    evaluation or any training), not at the first retraining."""
    from nnshrink import distributed
    from nnshrink.errors import ConfigError
    from nnshrink.stages import fit_trainer
    from nnshrink.train import TrainConfig

    monkeypatch.setattr(distributed, "world", lambda: (1, 3))
    with pytest.raises(ConfigError, match="batch size 128 does not divide among 3 ranks"):
        fit_trainer(None, TrainConfig(batch_size=128))
    fit_trainer(None, TrainConfig(batch_size=129))


def test_one_named_gpu_for_every_rank_is_refused(monkeypatch):
    """Under torchrun each rank takes its LOCAL_RANK's GPU; --device cuda:1 would put
    every rank on the same card (refused before any process group or GPU is touched)."""
    from nnshrink.distributed import join_from_env
    from nnshrink.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"--device cuda:1 names one GPU, but under torchrun each of the 2 "
                                          r"processes takes the GPU its LOCAL_RANK names; pass --device cuda"):
        with join_from_env("cuda:1"):
            pass


def test_the_console_script_leaves_at_once_after_a_run_under_torchrun(monkeypatch):
    """cli.run exits with main's status; after join_from_env left a group, through os._exit
    (torch's teardown can abort a rank that ran DDP on gloo), else through sys.exit."""
    from nnshrink import cli, distributed

    left = []
    monkeypatch.setattr(cli, "main", lambda: 3)
    monkeypatch.setattr(distributed.os, "_exit", lambda rc: left.append(rc))
    monkeypatch.setattr(distributed, "_left_a_group", False)
    with pytest.raises(SystemExit) as stop:
        cli.run()
    assert stop.value.code == 3 and left == []
    monkeypatch.setattr(distributed, "_left_a_group", True)
    with pytest.raises(SystemExit):  # the patched os._exit returns; run goes on to sys.exit
        cli.run()
    assert left == [3]
