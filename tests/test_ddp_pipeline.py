"""`nnshrink compress` under torchrun: 2 CPU ranks with gloo against one process.

Each rank runs the CLI's ``main`` with the environment torchrun would give it (RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT), on a small model of the user's own
(``--model-factory`` / ``--data-factory``) with pruning retrained and centroids
fine-tuned. With the same global batch and seed the 2-rank run must reach the same
masks, index assignments and (within float rounding of the gradient all-reduce)
codebooks as a single process, and the same top-1 within 0.2 points; only rank 0 may
open a file for writing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from nnshrink.distributed import leave_without_teardown

FACTORY = '''
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 48), nn.ReLU(), nn.Linear(48, 10))


def loaders():
    """Class c: a bright 6x6 square at a class-specific place on a noisy background."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (2024,), generator=g)
    x = torch.rand(2024, 1, 28, 28, generator=g) * 0.6
    for i, c in enumerate(y.tolist()):
        r, col = 2 + 8 * (c // 3), 2 + 8 * (c % 3)
        x[i, 0, r:r + 6, col:col + 6] += 0.4
    return (DataLoader(TensorDataset(x[:1024], y[:1024]), batch_size=128),
            DataLoader(TensorDataset(x[1024:], y[1024:]), batch_size=500))
'''

RECIPE = """
stages = ["prune", "share", "encode"]
[prune]
sparsity = 0.8
rounds = 2
retrain_epochs = 1
[share]
fc_bits = 4
conv_bits = 4
finetune_epochs = 1
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _argv(tmp: Path, out: str, *extra: str) -> list[str]:
    return ["compress", str(tmp / "base.safetensors"), "--model-factory", "ddp_factory:build", "--data-factory",
            "ddp_factory:loaders", "--recipe", str(tmp / "recipe.toml"), "-o", str(tmp / f"{out}.nsk"),
            "--json", str(tmp / f"{out}.json"), "--quiet", *extra]


def _record_writes(tmp: str) -> list[str]:
    """The paths under ``tmp`` this process opens for writing from now on (an audit hook)."""
    writes: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            writing = (mode and any(c in mode for c in "wax+")) or (flags and flags & (os.O_WRONLY | os.O_RDWR))
            if writing and os.fsdecode(path).startswith(tmp):
                writes.append(os.fsdecode(path))

    sys.addaudithook(audit)
    return writes


def _worker(rank: int, world: int, port: int, tmp: str, out: str, extra: tuple[str, ...]) -> None:
    tmp_path = Path(tmp)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    sys.path.insert(0, tmp)
    torch.set_num_threads(1)
    writes = _record_writes(tmp)
    from nnshrink.cli import main

    rc = main(_argv(tmp_path, out, *extra))
    (tmp_path / f"{out}-rank{rank}.json").write_text(json.dumps({"rc": rc, "writes": writes}))
    leave_without_teardown(0)  # as the console script does after a run under torchrun (cli.run)


def _archive(path: Path):
    from nnshrink.format import read_archive

    return read_archive(path).tensors


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from nnshrink.cli import main

    (tmp_path / "ddp_factory.py").write_text(FACTORY)
    (tmp_path / "recipe.toml").write_text(RECIPE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ddp_factory", raising=False)
    import ddp_factory

    model, (train, _) = ddp_factory.build(), ddp_factory.loaders()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):  # a trained float model: pruning and sharing then have accuracy to keep
        for x, y in train:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    save_file(model.state_dict(), str(tmp_path / "base.safetensors"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert main(_argv(tmp_path, "single", "--keep-work")) == 0

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "ddp", ()), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"ddp-rank{r}.json").read_text()) for r in range(2)]
    assert [r["rc"] for r in ranks] == [0, 0]
    assert ranks[1]["writes"] == [], "only rank 0 may write files"
    assert ranks[0]["writes"] and (tmp_path / "ddp.nsk").is_file() and (tmp_path / "ddp.json").is_file()
    assert not (tmp_path / "ddp.nsk.work").exists(), "the work folder is removed after a finished run"

    single, ddp = _archive(tmp_path / "single.nsk"), _archive(tmp_path / "ddp.nsk")
    shared = [n for n, t in single.items() if hasattr(t, "codebook")]
    assert len(shared) == 2
    for name in shared:
        a, b = single[name], ddp[name]
        np.testing.assert_array_equal(a.mask, b.mask, err_msg=f"{name}: masks differ")
        np.testing.assert_array_equal(a.indices, b.indices, err_msg=f"{name}: indices differ")
        np.testing.assert_allclose(a.codebook, b.codebook, rtol=1e-4, atol=1e-6, err_msg=f"{name}: codebooks")
    r1, r2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("single", "ddp"))
    assert r1["top1_after"] > 0.8  # the model learned the task: the comparison means something
    assert abs(r1["top1_after"] - r2["top1_after"]) <= 0.002

    # --resume under torchrun: a run killed after pruning (its work folder holds the prune
    # stage alone) is continued by 2 ranks, which read that stage and run the rest
    work = tmp_path / "resumed.nsk.work"
    shutil.copytree(tmp_path / "single.nsk.work", work)
    for f in work.glob("2-share.*"):
        f.unlink()
    (work / "lock").unlink()
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), "resumed", ("--resume",)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"resumed-rank{r}.json").read_text()) for r in range(2)]
    assert [r["rc"] for r in ranks] == [0, 0] and ranks[1]["writes"] == []
    report = json.loads((tmp_path / "resumed.json").read_text())
    assert [s.get("resumed", False) for s in report["stages"][:2]] == [True, False]
    resumed = _archive(tmp_path / "resumed.nsk")
    for name in shared:
        np.testing.assert_array_equal(single[name].mask, resumed[name].mask)
        np.testing.assert_allclose(single[name].codebook, resumed[name].codebook, rtol=1e-4, atol=1e-6)


def _diverging_worker(rank: int, world: int, port: int) -> None:
    """Rank 1 holds another codebook: check_same must stop both ranks with a StageError."""
    import torch.distributed as dist
    import torch.nn as nn

    from nnshrink.distributed import check_same
    from nnshrink.errors import StageError
    from nnshrink.quantize.share import share_weights

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 8))
        share_weights(model, 3)  # clusters rank 0's weights on both ranks
        check_same(model, "after sharing")
        if rank == 1:
            with torch.no_grad():
                model[0].weight_codebook[0] += 1e-3
        with pytest.raises(StageError, match=r"after fine-tuning: the masks / codebooks of rank\(s\) 1 differ"):
            check_same(model, "after fine-tuning")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ranks_that_disagree_are_stopped():
    mp.spawn(_diverging_worker, args=(2, _free_port()), nprocs=2, join=True)


def test_batch_that_does_not_divide_among_ranks_is_a_clear_error(monkeypatch):
    from nnshrink import distributed
    from nnshrink.errors import ConfigError

    monkeypatch.setattr(distributed, "world", lambda: (0, 3))
    with pytest.raises(ConfigError, match="batch size 128 does not divide among 3 ranks"):
        distributed.split_batch(128)
    assert distributed.split_batch(129) == 43


def _api_worker(rank: int, world: int, port: int, tmp: str) -> None:
    """The library path: the user's own DDP loop as ``fine_tune`` (as README shows it)."""
    import itertools

    import torch.distributed as dist
    from safetensors.torch import load_file
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler

    import nnshrink
    from nnshrink.recipes import recipe_from_dict

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.path.insert(0, tmp)
    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    writes = _record_writes(tmp)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import tomllib

        import ddp_factory

        model = ddp_factory.build()
        model.load_state_dict(load_file(str(tmp_path / "base.safetensors")))
        train, test = ddp_factory.loaders()
        sampler = DistributedSampler(train.dataset, seed=0)
        loader = DataLoader(train.dataset, batch_size=128 // world, sampler=sampler)
        seen = itertools.count()

        def fine_tune(m, epochs):
            net = DistributedDataParallel(m)
            opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.01)
            net.train()
            for _ in range(epochs):
                sampler.set_epoch(next(seen))
                for x, y in loader:
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(net(x), y).backward()
                    opt.step()

        @torch.no_grad()
        def evaluate(m):
            m.eval()
            return sum(int((m(x).argmax(1) == y).sum()) for x, y in test) / len(test.dataset)

        recipe = recipe_from_dict(tomllib.loads(RECIPE), "ddp")
        result = nnshrink.compress(model, recipe, fine_tune=fine_tune, evaluate=evaluate, progress=False,
                                   work_dir=tmp_path / "api.work")
        size = result.save(tmp_path / "api.nsk")
        digest = torch.tensor(list(__import__("hashlib").sha256(result.blob).digest()), dtype=torch.uint8)
        got = [torch.empty_like(digest) for _ in range(world)]
        dist.all_gather(got, digest)
        same = all(torch.equal(g, got[0]) for g in got)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    (tmp_path / f"api-rank{rank}.json").write_text(json.dumps(
        {"size": size, "same_archive": same, "writes": writes, "top1": result.report["top1_after"]}))
    leave_without_teardown(0)  # torch 2.13's teardown aborts a few DDP-on-gloo processes in a hundred


@pytest.mark.slow
def test_api_with_the_users_ddp_loop(tmp_path, monkeypatch):
    """compress() on 2 gloo ranks with a DistributedSampler + DDP fine_tune: both ranks end
    with the same archive (masks and codebooks are checked after every stage on the way),
    only rank 0 writes it and the work folder."""
    from safetensors.torch import save_file

    (tmp_path / "ddp_factory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ddp_factory", raising=False)
    import ddp_factory

    save_file(ddp_factory.build().state_dict(), str(tmp_path / "base.safetensors"))
    mp.spawn(_api_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"api-rank{r}.json").read_text()) for r in range(2)]
    assert all(r["same_archive"] for r in ranks)
    assert ranks[0]["size"] == ranks[1]["size"] == (tmp_path / "api.nsk").stat().st_size
    assert ranks[0]["writes"] and ranks[1]["writes"] == []
    assert not (tmp_path / "api.work").exists()
