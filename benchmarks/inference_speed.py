"""Issue F's figures: fc-layer latency, dense torch vs sparse (CSR) vs codebook kernels.

Layers (torch weight shape is (out, in)): LeNet-300-100 ip1 (300x784), LeNet-5 ip1
(500x800), VGG-16 fc7 (4096x4096) and fc6 (4096x25088), pruned to ``--density`` at
random positions and shared to 2**bits centroids; batch 1 and 64; single thread by
default (torch.set_num_threads(1), NUMBA_NUM_THREADS=1). Figures are medians of
interleaved repeats after warm-up; ``x`` ratios are dense_time / variant_time in the
same run. Single-threaded runs time the thread's CPU time (``--clock auto``), which
leaves out the time the process sat descheduled on a shared machine.

    python benchmarks/inference_speed.py --json benchmarks/results/inference_speed.json
    python benchmarks/inference_speed.py --quick        # no fc6, fewer repeats
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--density", type=float, default=0.09, help="kept fraction (paper: 8-10%% for VGG fc6/7)")
    ap.add_argument("--bits", type=int, default=5, help="codebook bits (paper: 5 for fc layers)")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--clock", default="auto", choices=["auto", "wall", "thread"])
    ap.add_argument("--layers", default=None, help="comma-separated subset of the layer names")
    args = ap.parse_args()
    os.environ["NUMBA_NUM_THREADS"] = str(args.threads)

    import numpy as np
    import warnings

    import torch
    import torch.nn.functional as F

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

    from _util import machine, write_json
    from nnshrink.compressed import SharedTensor, SparseTensor
    from nnshrink.runtime.kernels.codebook import codebook_linear
    from nnshrink.runtime.layers import CodebookLinear, SparseLinear
    from nnshrink.runtime.timing import pick_clock, time_interleaved

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (7 if args.quick else 11)
    layers = {"lenet300.ip1": (300, 784), "lenet5.ip1": (500, 800), "vgg16.fc7": (4096, 4096)}
    if not args.quick:
        layers["vgg16.fc6"] = (4096, 25088)
    if args.layers:
        layers = {k: v for k, v in layers.items() if k in args.layers.split(",")}
    batches = [int(b) for b in args.batch.split(",")]
    clock = pick_clock(args.clock)
    k = 2 ** args.bits
    rng = np.random.default_rng(0)
    rows_out = []
    for name, (out_f, in_f) in layers.items():
        mask = rng.random((out_f, in_f), dtype=np.float32) < args.density
        nnz = int(mask.sum())
        cb = np.sort(rng.standard_normal(k).astype(np.float32)) * 0.05
        codes = rng.integers(0, k, nnz).astype(np.uint8)
        shared = SharedTensor((out_f, in_f), cb, codes, args.bits, mask)
        dense_w = torch.from_numpy(shared.to_dense())
        bias = torch.randn(out_f)
        sparse_t = SparseTensor((out_f, in_f), mask, cb[codes])
        sl = SparseLinear.from_compressed(sparse_t, bias)
        cl = CodebookLinear.from_compressed(shared, bias)
        del mask
        torch_csr = dense_w.to_sparse_csr()
        for batch in batches:
            x = torch.randn(batch, in_f)
            xn = x.numpy()
            bn = bias.numpy()
            ref = F.linear(x, dense_w, bias)
            for fn in (sl, cl):
                if not torch.allclose(fn(x), ref, rtol=1e-3, atol=1e-3):
                    raise SystemExit(f"{name}: {type(fn).__name__} disagrees with F.linear")
            fns = {"dense": lambda: F.linear(x, dense_w, bias),
                   "sparse": lambda: sl(x),
                   "codebook": lambda: cl(x),
                   "torch_sparse_csr": lambda: torch.addmm(bias[:, None], torch_csr, x.T)}
            if batch == 1:
                fns["codebook_bins"] = lambda: codebook_linear(cl.cw, xn, bn, bins=True)
            with torch.no_grad():
                med = time_interleaved(fns, repeats=repeats, clock=clock, min_sample_s=0.02)
            row = {"layer": name, "shape": [out_f, in_f], "batch": batch, "density": nnz / (out_f * in_f),
                   "bits": args.bits, "bytes": {"dense": dense_w.numel() * 4, "sparse": sl.csr.nbytes,
                                                 "codebook": cl.cw.nbytes},
                   "median_us": {k_: v * 1e6 for k_, v in med.items()},
                   "speedup_vs_dense": {k_: med["dense"] / v for k_, v in med.items() if k_ != "dense"}}
            rows_out.append(row)
            sp = "  ".join(f"{k_} x{v:.2f}" for k_, v in row["speedup_vs_dense"].items())
            print(f"{name:<13} {out_f}x{in_f:<6} b={batch:<3} dense {med['dense'] * 1e6:9.1f} us  {sp}",
                  file=sys.stderr, flush=True)
        del dense_w, torch_csr, sl, cl, shared, sparse_t
    write_json({"machine": machine(), "threads": args.threads, "repeats": repeats, "clock": clock,
                "command": " ".join(["python"] + sys.argv),
                "density": args.density, "bits": args.bits, "rows": rows_out}, args.json)


if __name__ == "__main__":
    main()
