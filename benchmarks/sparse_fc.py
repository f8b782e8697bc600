"""A pruned + codebook-shared fully connected layer through nnshrink's runtime layer
(``CodebookLinear``, what ``nnshrink.load(..., runtime="compressed")`` builds) against
dense ``torch.nn.functional.linear`` on the same decoded weight, in the same run.

Default: the issue's 4096 x 9216 layer at 90 % and 95 % sparsity (random positions),
shared to 2**5 centroids, batch 1 and 64, single thread. Each of ``--runs`` runs is a
median of interleaved repeats (thread CPU time when single-threaded); ``speedup`` is the
median run, ``speedup_min`` the worst: a target met "in every run" is met by the min.
The JSON is a list of rows, each with the command, machine and clock it came from.

    python benchmarks/sparse_fc.py --runs 5 --json benchmarks/results/sparse_fc.json
    python benchmarks/sparse_fc.py --shape 4096x25088 --sparsity 0.91 --batch 64 --json fc6.json   # VGG-16 fc6
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _util import machine, single_thread, speedup_runs, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--shape", default="4096x9216", help="OUTxIN of the layer (torch weight shape)")
    ap.add_argument("--sparsity", default="0.9,0.95", help="comma-separated pruned fractions")
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--runs", type=int, default=5, help="independent runs (min and median reported)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved repeats per run (median)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    single_thread(args.threads)

    import numpy as np
    import torch
    import torch.nn.functional as F

    from nnshrink.compressed import SharedTensor
    from nnshrink.runtime.layers import CodebookLinear
    from nnshrink.runtime.timing import pick_clock

    out_f, in_f = (int(v) for v in args.shape.lower().split("x"))
    rng = np.random.default_rng(0)
    rows = []
    for sparsity in (float(s) for s in args.sparsity.split(",")):
        mask = rng.random((out_f, in_f), dtype=np.float32) >= sparsity
        k = 2 ** args.bits
        cb = np.sort(rng.standard_normal(k).astype(np.float32)) * 0.05
        shared = SharedTensor((out_f, in_f), cb, rng.integers(0, k, int(mask.sum())).astype(np.uint8), args.bits, mask)
        bias = torch.randn(out_f)
        layer = CodebookLinear.from_compressed(shared, bias)
        dense_w = torch.from_numpy(shared.to_dense())
        for batch in (int(b) for b in args.batch.split(",")):
            x = torch.randn(batch, in_f)
            with torch.no_grad():
                if not torch.allclose(layer(x), F.linear(x, dense_w, bias), rtol=1e-3, atol=1e-3):
                    raise SystemExit("CodebookLinear disagrees with F.linear")
                res = speedup_runs({"dense": lambda: F.linear(x, dense_w, bias), "kernel": lambda: layer(x)},
                                   args.runs, args.repeats)
            row = {"shape": [out_f, in_f], "sparsity": sparsity, "density": float(mask.mean()), "bits": args.bits,
                   "batch": batch, **res, "dense_bytes": dense_w.numel() * 4, "kernel_bytes": layer.weight_nbytes()}
            rows.append(row)
            print(f"{out_f}x{in_f} sparsity {sparsity:.2f} batch {batch:<3} dense {res['dense_us']:9.0f} us  "
                  f"codebook x{res['speedup']:.2f} (min x{res['speedup_min']:.2f} of {args.runs} runs)",
                  file=sys.stderr, flush=True)
        del dense_w, layer, shared, mask
    run = {"command": " ".join(["python"] + sys.argv), "machine": machine(), "threads": args.threads,
           "clock": pick_clock(), "runs": args.runs, "repeats": args.repeats}
    write_json([{**row, **run} for row in rows], args.json)  # a list of rows, each saying how it was measured


if __name__ == "__main__":
    main()
