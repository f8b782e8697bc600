"""A pruned + codebook-shared 3x3 convolution through nnshrink's runtime layer
(``KernelConv2d``, what ``nnshrink.load(..., runtime="compressed")`` builds for Conv2d)
against ``torch.nn.functional.conv2d`` on the same decoded weight, in the same run.

Default: the issue's 256 -> 256 channel 3x3 layer (padding 1) on a 28x28 map, 90 %
sparse at random positions, shared to 2**5 centroids, batch 1, single thread; ``--runs``
independent runs, median and min reported as in ``sparse_fc.py``.

    python benchmarks/sparse_conv.py --runs 5 --json benchmarks/results/sparse_conv.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _util import machine, single_thread, speedup_runs, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--channels", default="256x256", help="OUTxIN channels")
    ap.add_argument("--size", type=int, default=28, help="input map height = width")
    ap.add_argument("--kernel", type=int, default=3)
    ap.add_argument("--sparsity", default="0.9")
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--batch", default="1")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    single_thread(args.threads)

    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from nnshrink.compressed import SharedTensor
    from nnshrink.runtime.conv import KernelConv2d
    from nnshrink.runtime.timing import pick_clock

    cout, cin = (int(v) for v in args.channels.lower().split("x"))
    k, pad = args.kernel, args.kernel // 2
    rng = np.random.default_rng(0)
    rows = []
    for sparsity in (float(s) for s in args.sparsity.split(",")):
        shape = (cout, cin, k, k)
        mask = rng.random(shape, dtype=np.float32) >= sparsity
        n = 2 ** args.bits
        cb = np.sort(rng.standard_normal(n).astype(np.float32)) * 0.05
        shared = SharedTensor(shape, cb, rng.integers(0, n, int(mask.sum())).astype(np.uint8), args.bits, mask)
        conv = nn.Conv2d(cin, cout, k, padding=pad)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(shared.to_dense()))
        layer = KernelConv2d.from_compressed(shared, conv)
        w, b = conv.weight.detach(), conv.bias.detach()
        for batch in (int(v) for v in args.batch.split(",")):
            x = torch.randn(batch, cin, args.size, args.size)
            with torch.no_grad():
                if not torch.allclose(layer(x), F.conv2d(x, w, b, 1, pad), rtol=1e-3, atol=1e-3):
                    raise SystemExit("KernelConv2d disagrees with F.conv2d")
                res = speedup_runs({"dense": lambda: F.conv2d(x, w, b, 1, pad), "kernel": lambda: layer(x)},
                                   args.runs, args.repeats)
            rows.append({"weight_shape": list(shape), "size": args.size, "sparsity": sparsity,
                         "density": float(mask.mean()), "bits": args.bits, "batch": batch, **res,
                         "dense_bytes": w.numel() * 4, "kernel_bytes": layer.weight_nbytes()})
            print(f"conv {shape} on {args.size}x{args.size} sparsity {sparsity:.2f} batch {batch}: dense "
                  f"{res['dense_us']:.0f} us, codebook x{res['speedup']:.2f} (min x{res['speedup_min']:.2f} of "
                  f"{args.runs} runs)", file=sys.stderr, flush=True)
    run = {"command": " ".join(["python"] + sys.argv), "machine": machine(), "threads": args.threads,
           "clock": pick_clock(), "runs": args.runs, "repeats": args.repeats}
    write_json([{**row, **run} for row in rows], args.json)


if __name__ == "__main__":
    main()
