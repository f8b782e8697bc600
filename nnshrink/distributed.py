"""Runs under torchrun (DistributedDataParallel): one writer, and ranks that provably agree.

``torchrun --nproc_per_node N -m nnshrink compress ...`` starts N copies of the command;
each joins the process group from torchrun's environment (``join_from_env``: gloo on CPU,
nccl on CUDA). Every rank runs the whole pipeline on the same model: retraining shards
the batches (``train.fit`` splits each global batch among the ranks), pruning masks and
k-means codebooks are taken from rank 0 (``broadcast_``), and after every stage
``check_same`` compares a digest of every rank's masks, codebooks and indices, so a rank
that drifted stops the run with a clear error instead of writing a mixed archive. Only
rank 0 writes files (``is_writer``); the others read the work folder for ``--resume``.

Without torch.distributed initialised every helper here is a no-op for a single process.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import re
import sys
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

from .errors import ConfigError, StageError


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    return world()[1] > 1


def is_writer() -> bool:
    """True on the one process that writes files: rank 0, or a process not under torchrun."""
    return world()[0] == 0


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer (torchrun sets it); got {value!r}") from None


TIMEOUT_ENV = "NNSHRINK_DIST_TIMEOUT"


def _timeout() -> timedelta | None:
    """How long a rank waits for the others in one collective (``NNSHRINK_DIST_TIMEOUT``
    seconds; unset: torch's default). A rank that stops answering is then an error here."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds > 0; got {text!r}")
    return timedelta(seconds=seconds)


# What the backends say when a peer is gone; errors raised inside DDP's backward reach
# Python as plain RuntimeErrors, so the type alone does not tell.
_PEER_LOST = re.compile(r"gloo|nccl|ProcessGroup|Connection (closed|reset) by peer|timed out", re.IGNORECASE)


def lost_peer(exc: BaseException) -> BaseException | None:
    """The torch.distributed error (a peer that died, closed its connection or timed out)
    behind ``exc``, following its causes; None when there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and _PEER_LOST.search(str(exc))):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _reason(exc: BaseException) -> str:
    """The first sentence of a torch.distributed message, without its source-file prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")


@contextlib.contextmanager
def join_from_env(device: str = "cpu") -> Iterator[bool]:
    """Join the process group torchrun's environment describes (WORLD_SIZE > 1) for the
    duration of a command, and leave it after; yields whether this process is distributed.
    A group the caller already initialised is used as it is and left alone.

    A rank that loses another one (it died, or stopped answering for longer than
    ``NNSHRINK_DIST_TIMEOUT``) raises a StageError saying so, instead of the backend's
    message; the work folder keeps the finished stages for ``--resume``."""
    if dist.is_available() and dist.is_initialized():
        with _peers_lost_is_an_error():
            yield is_distributed()
        return
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        yield False
        return
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 (torchrun), but this torch build has no torch.distributed")
    timeout = _timeout()
    cuda = str(device).startswith("cuda")
    if cuda and torch.device(device).index is not None:
        raise ConfigError(f"--device {device} names one GPU, but under torchrun each of the {_env_int('WORLD_SIZE')} "
                          "processes takes the GPU its LOCAL_RANK names; pass --device cuda")
    if cuda:
        torch.cuda.set_device(_env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0)
    dist.init_process_group("nccl" if cuda else "gloo", **({"timeout": timeout} if timeout else {}))
    try:
        with _peers_lost_is_an_error():
            yield True
    except StageError as exc:
        if lost_peer(exc) is not None:
            atexit.register(leave_without_teardown, 2)
        raise
    finally:
        dist.destroy_process_group()
        global _left_a_group
        _left_a_group = True


_left_a_group = False  # join_from_env joined a group and left it (cli.run then exits at once)


def left_a_group() -> bool:
    """Whether this process joined torchrun's group in ``join_from_env`` and has left it."""
    return _left_a_group


def leave_without_teardown(status: int) -> None:
    """Flush and leave with ``status`` without the rest of the interpreter's teardown, in
    which torch can abort the process ("terminate called without an active exception"):
    after a lost peer a backend thread still waits on it (registered at exit, status 2), and
    torch 2.13 aborts a few in a hundred processes that ran DDP on gloo even after a clean
    finish (cli.run). Everything the command writes is written or removed by then."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(status)


@contextlib.contextmanager
def _peers_lost_is_an_error() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        cause = lost_peer(exc)
        if cause is None:
            raise
        rank, n = world()
        raise StageError(f"rank {rank} of {n} lost contact with another rank ({_reason(cause)}): a process of "
                         "this run died or stopped answering (its own output says why); no archive is ever left "
                         "half written, and the finished stages are kept for --resume") from exc


def split_batch(batch_size: int) -> int:
    """Each rank's share of a global batch of ``batch_size`` (the whole batch in one process)."""
    _, n = world()
    if batch_size % n:
        raise ConfigError(f"batch size {batch_size} does not divide among {n} ranks (torchrun --nproc_per_node); "
                          f"use a batch size that is a multiple of {n}")
    return batch_size // n


@torch.no_grad()
def broadcast_(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank 0's value (bool tensors too); returns it."""
    if not is_distributed():
        return tensor
    if tensor.dtype == torch.bool:
        flat = tensor.to(torch.uint8).contiguous()
        dist.broadcast(flat, src=0)
        tensor.copy_(flat.to(torch.bool))
    else:
        flat = tensor.detach().contiguous()
        dist.broadcast(flat, src=0)
        if flat.data_ptr() != tensor.data_ptr():
            tensor.copy_(flat)
    return tensor


def compression_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What the stages installed in ``model`` and every rank must hold alike: pruning
    masks, codebooks and codebook indices (by their state names), plus the weights."""
    from .prune.masks import module_masks
    from .quantize.share import codebook_name, index_name, shared_params

    out: dict[str, torch.Tensor] = {}
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for p_name, mask in module_masks(mod).items():
            out[f"{prefix}{p_name} mask"] = mask
        for p_name in shared_params(mod):
            out[f"{prefix}{codebook_name(p_name)}"] = getattr(mod, codebook_name(p_name))
            out[f"{prefix}{index_name(p_name)}"] = getattr(mod, index_name(p_name))
    return out


def digest(tensors: dict[str, torch.Tensor]) -> bytes:
    """sha256 over names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(tensors.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def check_same(model: nn.Module, where: str) -> None:
    """Raise StageError on every rank when any rank's masks / codebooks / indices differ
    from rank 0's (compared by digest: one small all-gather, whatever the model's size)."""
    if not is_distributed():
        return
    rank, n = world()
    mine = torch.tensor(list(digest(compression_state(model))), dtype=torch.uint8, device=_comm_device())
    got = [torch.empty_like(mine) for _ in range(n)]
    dist.all_gather(got, mine)
    bad = [r for r in range(n) if not torch.equal(got[r], got[0])]
    if bad:
        raise StageError(f"{where}: the masks / codebooks of rank(s) {', '.join(map(str, bad))} differ from "
                         "rank 0's (under DDP every rank must hold the same compression; does the fine-tuning "
                         "loop wrap the model in DistributedDataParallel?)")


def _comm_device() -> torch.device:
    """Where the backend wants the tensors of a collective: this rank's GPU for nccl
    (the one ``join_from_env`` or the caller selected), else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(ok: bool, what: str) -> None:
    """Every rank learns whether all ranks got past a step (one all-reduce); ranks that
    were fine raise too, instead of waiting forever for a rank that failed."""
    if not is_distributed():
        return
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if ok and int(flag.item()) == 0:
        raise StageError(f"{what} failed on another rank (its own error is in its output)")
