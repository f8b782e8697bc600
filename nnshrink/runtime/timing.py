"""Interleaved latency measurement for comparing kernels on a shared, noisy machine.

Every repeat times each variant once, in turn, so a burst of load from another process
hits all of them alike; the figure per variant is the median over repeats, and speed-ups
are ratios of medians taken in the same run. Tiny calls are looped ``number`` times per
sample so one sample lasts at least ``min_sample_s``.

``clock="thread"`` reads the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID), which
leaves out the time the process sat descheduled while other jobs ran: on an
oversubscribed machine it is far steadier than wall time. It is only right when the
work runs in the calling thread, i.e. single-threaded torch and numba; ``clock="auto"``
picks it when ``torch.get_num_threads() == 1`` and wall time otherwise.
"""

from __future__ import annotations

import time
from typing import Callable


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def pick_clock(clock: str = "auto") -> str:
    if clock == "auto":
        import torch

        return "thread" if torch.get_num_threads() == 1 else "wall"
    if clock not in CLOCKS:
        raise ValueError(f"clock must be auto, wall or thread; got {clock!r}")
    return clock


def _calibrate(fn: Callable[[], object], min_sample_s: float, now: Callable[[], float]) -> int:
    n = 1
    while True:
        t, w = now(), time.perf_counter()
        for _ in range(n):
            fn()
        if now() - t >= min_sample_s or time.perf_counter() - w >= 10 * min_sample_s or n >= 1 << 16:
            return n
        n *= 4


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int = 9, warmup: int = 2,
                     min_sample_s: float = 2e-3, clock: str = "auto") -> dict[str, float]:
    """Median seconds per call of each zero-argument callable, measured interleaved."""
    now = CLOCKS[pick_clock(clock)]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    number = {k: _calibrate(fn, min_sample_s, now) for k, fn in fns.items()}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            n = number[k]
            t = now()
            for _ in range(n):
                fn()
            samples[k].append((now() - t) / n)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
