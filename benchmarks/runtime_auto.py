"""Where a kernel layer pays: the measurements behind ``runtime="auto"``'s rule
(``nnshrink/runtime/swap.py``: AUTO_*_MAX_DENSITY and AUTO_*_MIN_KEPT).

Sweeps codebook-shared (5-bit) Linear layers over sizes and densities, and 3x3 convs
over channel counts and densities, at batch 1 and 64, single thread: the runtime layer
(``CodebookLinear`` / ``KernelConv2d``, Python call included) against the torch layer on
the same decoded weight. A row's ``speedup`` > 1 means the kernel pays there.

    python benchmarks/runtime_auto.py --json benchmarks/results/runtime_auto.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _util import machine, single_thread, speedup_runs, write_json  # noqa: E402

LINEAR = [(10, 100), (100, 300), (300, 784), (500, 800), (1024, 1024)]
CONV = [(20, 1, 28), (50, 20, 12), (64, 64, 28), (128, 128, 14)]  # out, in channels, map size (5x5 for LeNet-5 sizes)
DENSITIES = [0.05, 0.1, 0.2, 0.3, 0.5]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", default="1,64")
    args = ap.parse_args()
    single_thread(1)

    import numpy as np
    import torch
    import torch.nn as nn

    from nnshrink.compressed import SharedTensor
    from nnshrink.runtime.swap import accelerate

    rng = np.random.default_rng(0)
    rows = []

    def shared(shape, d):
        mask = rng.random(shape) < d
        return SharedTensor(shape, np.linspace(-0.1, 0.1, 32, dtype=np.float32),
                            rng.integers(0, 32, int(mask.sum())).astype(np.uint8), 5, mask)

    cases = [("linear", (o, i), None, nn.Linear(i, o)) for o, i in LINEAR]
    cases += [("conv2d", (o, c, 5 if c <= 20 else 3, 5 if c <= 20 else 3), s,
               nn.Conv2d(c, o, 5 if c <= 20 else 3, padding=0 if c <= 20 else 1)) for o, c, s in CONV]
    for kind, shape, size, layer in cases:
        for d in DENSITIES:
            t = shared(shape, d)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(t.to_dense()))
            fast = accelerate(nn.Sequential(layer), {"0.weight": t}, runtime="compressed")[0]
            for b in (int(v) for v in args.batch.split(",")):
                x = torch.randn(b, shape[1]) if kind == "linear" else torch.randn(b, shape[1], size, size)
                with torch.no_grad():
                    res = speedup_runs({"dense": lambda: layer(x), "kernel": lambda: fast(x)}, 1, args.repeats,
                                       min_sample_s=0.005)
                kept = int(np.count_nonzero(t.mask))
                rows.append({"kind": kind, "shape": list(shape), "size": size, "density": d, "kept": kept,
                             "batch": b, "speedup": res["speedup"], "dense_us": res["dense_us"]})
                print(f"{kind} {shape} {size or ''} d={d} kept={kept} b={b}: dense {res['dense_us']:.1f} us "
                      f"x{res['speedup']:.2f}", file=sys.stderr, flush=True)
    write_json([{**r, "command": " ".join(["python"] + sys.argv), "machine": machine()} for r in rows], args.json)


if __name__ == "__main__":
    main()
