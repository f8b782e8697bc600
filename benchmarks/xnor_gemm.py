"""XNOR + popcount GEMM (numba) against torch float32 matmul, single thread, same run.

    python benchmarks/xnor_gemm.py --runs 5 --json benchmarks/results/xnor_gemm.json
    python benchmarks/xnor_gemm.py --quick

Weights are packed beforehand (offline, as in a stored model); the activations are
signed and packed inside the timed region. Times are medians of interleaved repeats
(binary and float alternate, so load from other jobs hits both alike).
Also: an end-to-end XNOR LeNet-5 forward (packed kernels) against the float LeNet-5.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nnshrink.models import build_model  # noqa: E402
from nnshrink.runtime.binary_infer import pack_model  # noqa: E402
from nnshrink.runtime.kernels import xnor as X  # noqa: E402

SHAPES = [(1, 9216, 4096, 30.0), (64, 9216, 4096, 10.0), (3136, 576, 64, 5.0)]


def interleaved(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, run in alternation."""
    for f in fns.values():
        f()  # warm-up (and JIT)
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def bench_gemm(m: int, k: int, n: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    packed = X.pack_rows(w)  # offline
    alpha = np.abs(w).mean(1).astype(np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(w.T))
    a_packed = X.pack_rows(x)
    ref = X.xnor_matmul_ref(x, np.where(w >= 0, 1.0, -1.0), alpha)
    err = float(np.abs(X.xnor_matmul(x, packed, k, alpha) - ref).max())
    t = interleaved({"float": lambda: torch.matmul(xt, wt),
                     "xnor": lambda: X.xnor_matmul(x, packed, k, alpha),
                     "pack": lambda: X.pack_rows(x, transpose=X.n_words(k) <= X._NARROW_WORDS),
                     "gemm_prepacked": lambda: X.xnor_gemm(a_packed, packed, k, alpha)}, repeats)
    return {"speedup": t["float"] / t["xnor"], "xnor_ms": t["xnor"] * 1e3, "float_ms": t["float"] * 1e3,
            "pack_ms": t["pack"] * 1e3, "gemm_prepacked_ms": t["gemm_prepacked"] * 1e3,
            "speedup_prepacked_wide_kernel": t["float"] / t["gemm_prepacked"],
            "max_abs_err_vs_float_pm1": err, "repeats": repeats}


def bench_conv_gemm(repeats: int) -> dict:
    """3136x576x64 is a 3x3 conv, 64 -> 64 channels, on a 56x56 map (one image). The binary
    side starts from the float feature map the layer receives (sign-and-pack per pixel, word
    im2col, GEMM: all timed); the float side is torch.matmul on the ready-made im2col
    matrix (unfold not timed, which favours float), with torch's conv2d beside it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 64, 56, 56), dtype=np.float32)
    w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32)
    packed = X.pack_conv_weight(w)  # offline
    alpha = np.abs(w).mean((1, 2, 3)).astype(np.float32)
    xt, wt4 = torch.from_numpy(x), torch.from_numpy(w)
    cols = torch.nn.functional.unfold(xt, 3, padding=1)[0].T.contiguous()  # (3136, 576), (c, dy, dx) order
    wt = wt4.reshape(64, -1).T.contiguous()
    cols_np = np.ascontiguousarray(X.im2col_sign_pack(x, (3, 3), 1, 1))
    assert cols.shape == (3136, 576)
    ref = X.xnor_conv2d_ref(x, np.where(w >= 0, 1.0, -1.0).astype(np.float32), alpha, 1, 1)
    err = float(np.abs(X.xnor_conv2d(x, packed, (3, 3), alpha, 1, 1) - ref).max())
    packed_rows = X.pack_rows(np.where(w >= 0, 1.0, -1.0).reshape(64, -1).astype(np.float32))
    cols_f = cols.numpy()
    t = interleaved({"float": lambda: torch.matmul(cols, wt),
                     "float_conv2d": lambda: torch.nn.functional.conv2d(xt, wt4, padding=1),
                     "xnor_conv": lambda: X.xnor_conv2d(x, packed, (3, 3), alpha, 1, 1),
                     "xnor_from_float_im2col": lambda: X.xnor_matmul(cols_f, packed_rows, 576, alpha),
                     "gemm_prepacked": lambda: X._gemm_narrow_t(cols_np, packed, 576, alpha,
                                                                np.empty((64, 3136), np.float32))}, repeats)
    return {"speedup": t["float"] / t["xnor_conv"], "xnor_ms": t["xnor_conv"] * 1e3, "float_ms": t["float"] * 1e3,
            "float_conv2d_ms": t["float_conv2d"] * 1e3, "gemm_prepacked_ms": t["gemm_prepacked"] * 1e3,
            "speedup_vs_torch_conv2d": t["float_conv2d"] / t["xnor_conv"],
            "xnor_from_float_im2col_ms": t["xnor_from_float_im2col"] * 1e3,
            "speedup_from_float_im2col_matrix": t["float"] / t["xnor_from_float_im2col"],
            "form": "conv 3x3, 64->64 channels, 56x56 map, padding 1; packing from the float map timed",
            "max_abs_err_vs_float_pm1": err, "repeats": repeats}


def bench_lenet(batches, repeats: int) -> dict:
    torch.manual_seed(0)
    xnor = build_model("lenet5-xnor")
    xnor.train()
    xnor(torch.randn(64, 1, 28, 28))  # non-trivial BN statistics
    xnor.eval()
    packed = pack_model(xnor)
    fl = build_model("lenet5").eval()
    out = {}
    for b in batches:
        x = torch.randn(b, 1, 28, 28)
        with torch.no_grad():
            err = float((packed(x) - xnor(x)).abs().max())
            t = interleaved({"float": lambda: fl(x), "xnor_packed": lambda: packed(x),
                             "xnor_torch_float_sim": lambda: xnor(x)}, repeats)
        out[f"batch{b}"] = {"speedup": t["float"] / t["xnor_packed"], "float_ms": t["float"] * 1e3,
                            "xnor_packed_ms": t["xnor_packed"] * 1e3,
                            "xnor_simulated_in_torch_ms": t["xnor_torch_float_sim"] * 1e3,
                            "max_abs_err_packed_vs_torch": err}
    return out


def run_once(reps: int) -> dict:
    res: dict = {}
    for m, k, n, target in SHAPES:
        r = bench_conv_gemm(reps) if (m, k, n) == (3136, 576, 64) else bench_gemm(m, k, n, reps)
        r["target"] = target
        res[f"{m}x{k}x{n}"] = r
        extra = (f" (from a float im2col matrix instead: {r['speedup_from_float_im2col_matrix']:.1f}x)"
                 if "form" in r else f" (pack {r['pack_ms']:.3f})")
        print(f"{m}x{k}x{n}: xnor {r['xnor_ms']:.3f} ms vs float32 {r['float_ms']:.3f} ms -> "
              f"{r['speedup']:.1f}x (target {target:.0f}x){extra}", flush=True)
    res["lenet5_xnor_e2e"] = bench_lenet([1, 64], reps)
    for key, r in res["lenet5_xnor_e2e"].items():
        print(f"lenet5-xnor {key}: packed {r['xnor_packed_ms']:.3f} ms vs float lenet5 {r['float_ms']:.3f} ms "
              f"-> {r['speedup']:.2f}x", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--runs", type=int, default=1,
                    help="whole benchmark this many times; each shape reports the median run's speed-up "
                         "(on a shared host, memory bandwidth drifts between minutes)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    reps = args.repeats or (5 if args.quick else 21)
    res: dict = {"machine": f"2-core shared CPU VM, no GPU, torch {torch.__version__.split('+')[0]} CPU "
                            f"({platform.processor() or platform.machine()})",
                 "threads": 1, "note": "weights pre-packed; activation sign-and-pack inside the timed region",
                 "runs": args.runs, "loadavg_1min_before": os.getloadavg()[0]}
    runs = []
    for i in range(args.runs):
        if args.runs > 1:
            print(f"-- run {i + 1}/{args.runs}", flush=True)
        runs.append(run_once(reps))
    for key in [f"{m}x{k}x{n}" for m, k, n, _ in SHAPES]:
        speedups = [r[key]["speedup"] for r in runs]
        median_run = sorted(runs, key=lambda r: r[key]["speedup"])[len(runs) // 2]
        res[key] = dict(median_run[key], speedup=float(np.median(speedups)), speedup_runs=speedups)
    res["lenet5_xnor_e2e"] = {b: dict(runs[0]["lenet5_xnor_e2e"][b],
                                      speedup=float(np.median([r["lenet5_xnor_e2e"][b]["speedup"] for r in runs])),
                                      speedup_runs=[r["lenet5_xnor_e2e"][b]["speedup"] for r in runs])
                              for b in runs[0]["lenet5_xnor_e2e"]}
    res["loadavg_1min_after"] = os.getloadavg()[0]
    if args.runs > 1:
        for key in [f"{m}x{k}x{n}" for m, k, n, _ in SHAPES]:
            print(f"{key}: median {res[key]['speedup']:.1f}x over runs "
                  f"{', '.join(f'{v:.1f}' for v in res[key]['speedup_runs'])} (target {res[key]['target']:.0f}x)")
    print(f"load average (1 min) before/after: {res['loadavg_1min_before']:.1f} / {res['loadavg_1min_after']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
