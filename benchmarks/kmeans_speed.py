"""1-D k-means speed: nnshrink.quantize.kmeans (sort + prefix sums) against scikit-learn.

Same data, same run. nnshrink clusters all N weights to its exact fixed point. sklearn's
KMeans costs O(n k) per iteration, so it runs on a random subsample (nnshrink is run on
that subsample too, for a like-for-like time and inertia), with nnshrink's linear init and
its own defaults (tol=1e-4, max_iter=300); one full-size sklearn iteration is timed to show
the per-iteration cost. sklearn's centroids are also scored on the full data.

    .venv/bin/python benchmarks/kmeans_speed.py [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from nnshrink.quantize.kmeans import _label, init_centroids, inertia, kmeans_1d_full  # noqa: E402


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def score_full(x, cents):
    """Inertia of the full data against sorted centroids ``cents`` (nearest centroid)."""
    c = np.sort(np.asarray(cents, np.float64).reshape(-1))
    labels = _label(x, 0.5 * (c[1:] + c[:-1]), float(x.min()), float(x.max()))
    return inertia(x, c, labels)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--sub", type=int, default=200_000, help="sklearn subsample size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.sub, args.repeats = 1_000_000, 50_000, 1
    from sklearn.cluster import KMeans
    import sklearn

    rng = np.random.default_rng(0)
    # weight-like data: a heavy-tailed bell (Laplace), float32
    x = rng.laplace(0, 0.05, args.n).astype(np.float32)
    kmeans_1d_full(x[:1000], 4)  # numba compile / cache load outside the timings
    res = {"n": args.n, "k": args.k, "machine": f"{platform.machine()} {os.cpu_count()} cpu, "
           "2-core shared CPU VM, no GPU, torch 2.13 CPU", "numpy": np.__version__,
           "sklearn": sklearn.__version__, "runs": {}}

    for init in ("linear", "density"):
        med, times, r = timed(lambda: kmeans_1d_full(x, args.k, init=init), args.repeats)
        res["runs"][f"nnshrink_full_{init}"] = {"seconds": med, "all_seconds": times, "inertia": r.inertia,
                                                "iterations": r.n_iter, "converged": r.converged, "k_used": r.k_used}
        print(f"nnshrink {init:8s} n={args.n:>9,d} k={args.k}: {med:.3f} s (median of {args.repeats}), "
              f"{r.n_iter} iterations, converged={r.converged}, k_used={r.k_used}, inertia={r.inertia:.6g}")

    sub = x[rng.choice(args.n, args.sub, replace=False)]
    med, times, r = timed(lambda: kmeans_1d_full(sub, args.k), args.repeats)
    res["runs"]["nnshrink_sub_linear"] = {"n": args.sub, "seconds": med, "inertia": r.inertia,
                                          "iterations": r.n_iter, "k_used": r.k_used}
    print(f"nnshrink linear   n={args.sub:>9,d}: {med:.3f} s, inertia={r.inertia:.6g}")
    init = init_centroids(np.sort(sub).astype(np.float64), args.k, "linear").reshape(-1, 1)
    with threadpool_limits(1):
        km = KMeans(args.k, init=init, n_init=1, algorithm="lloyd", random_state=0)
        t = time.perf_counter()
        km.fit(sub.reshape(-1, 1))
        dt = time.perf_counter() - t
        res["runs"]["sklearn_sub_linear"] = {"n": args.sub, "seconds": dt, "inertia": float(km.inertia_),
                                             "iterations": int(km.n_iter_),
                                             "inertia_on_full_data": score_full(x, km.cluster_centers_)}
        print(f"sklearn  linear   n={args.sub:>9,d}: {dt:.3f} s, {km.n_iter_} iterations, inertia={km.inertia_:.6g}")
        one = KMeans(args.k, init=init, n_init=1, algorithm="lloyd", max_iter=1, random_state=0)
        t = time.perf_counter()
        one.fit(x.reshape(-1, 1))
        dt1 = time.perf_counter() - t
        res["runs"]["sklearn_full_one_iteration"] = {"n": args.n, "seconds": dt1}
        print(f"sklearn  one Lloyd iteration on n={args.n:,d}: {dt1:.3f} s")
    ours = res["runs"]["nnshrink_full_linear"]
    res["runs"]["nnshrink_full_linear"]["inertia_vs_sklearn_sub_centroids"] = (
        ours["inertia"] / res["runs"]["sklearn_sub_linear"]["inertia_on_full_data"])
    print(f"full-data inertia: nnshrink {ours['inertia']:.6g} vs sklearn(subsample centroids) "
          f"{res['runs']['sklearn_sub_linear']['inertia_on_full_data']:.6g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
