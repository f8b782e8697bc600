"""Pruned retraining under DistributedDataParallel: 2 CPU processes with gloo.

Both ranks prune the same way and retrain a few steps through ``fit`` (which wraps the
model in DDP itself); afterwards masks and weights must be identical on both ranks and
pruned entries exactly zero.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from nnshrink.data import Dataset
from nnshrink.distributed import leave_without_teardown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from nnshrink.prune import iterative_prune, prune_model
        from nnshrink.train import TrainConfig, fit

        g = torch.Generator().manual_seed(0)
        x = torch.rand(256, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (256,), generator=g)
        data = Dataset("tiny", x, y, x[:64], y[:64])
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
        if rank == 1:  # different weights on rank 1: masks must still agree (rank 0's win)
            with torch.no_grad():
                model[1].weight.copy_(torch.randn_like(model[1].weight) * 0.05)
        prune_model(model, 0.7)
        fit(model, data, TrainConfig(epochs=1, lr=0.05, batch_size=32, max_steps=6),
            eval_each_epoch=False, progress=False)  # no after_step: the masks hold under DDP
        iterative_prune(model, data, 0.9, train_cfg=TrainConfig(epochs=1, lr=0.05, batch_size=32, max_steps=4),
                        progress=False, evaluate_rounds=False)
        for m in (model[1], model[3]):
            assert torch.all(m.weight[~m.weight_mask] == 0)
        for t in [model[1].weight, model[3].weight, model[1].bias,
                  model[1].weight_mask.to(torch.uint8), model[3].weight_mask.to(torch.uint8)]:
            t = t.detach().contiguous()
            got = [torch.empty_like(t) for _ in range(world)]
            dist.all_gather(got, t)
            assert torch.equal(got[0], got[1]), "ranks disagree"
        assert abs(float(model[1].weight_mask.float().mean()) - 0.1) < 1e-3
        dist.barrier()  # both ranks done before teardown: gloo aborts a rank whose peer left mid-call
    finally:
        dist.destroy_process_group()
    leave_without_teardown(0)  # passed: torch 2.13's teardown aborts a few DDP-on-gloo processes in a hundred


def test_ddp_two_ranks_identical_masks_and_weights():
    mp.spawn(_worker, args=(2, _free_port()), nprocs=2, join=True)
