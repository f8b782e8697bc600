"""Exact 1-D k-means (Lloyd) in O(k log n) per iteration.

In one dimension every k-means cluster is a contiguous run of the sorted data, bounded by
the midpoints between neighbouring centroids. So we sort once, keep prefix sums of x,
and each Lloyd iteration is: midpoints -> ``searchsorted`` boundaries -> cluster
sums from prefix sums -> new means. No pass over the n weights per iteration; the only
O(n) work is the sort, the prefix sums and the final labelling. Converged means an exact
Lloyd fixed point (every centroid is the mean of the points nearest to it), not
"centroids moved < tol".

Initialisations (Deep Compression section 3.2): ``linear`` spaces k centroids evenly
between min and max (keeps the rare large weights; the paper's best), ``density`` puts
them at evenly spaced quantiles, ``random`` (Forgy) picks k distinct data values.

A cluster that goes empty has its centroid moved onto the far end of the cluster with the
largest squared error (as scikit-learn relocates empty clusters), so all k codebook
entries stay in use; data with fewer distinct values than k gets one exact centroid per
value, so ``len(centroids)`` (k_used) can be below k. Anything still empty is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ..errors import ConfigError

INITS = ("linear", "density", "random")


@dataclass(frozen=True)
class KMeansResult:
    centroids: np.ndarray  # float32[k_used], strictly increasing
    labels: np.ndarray  # int32, same shape as the input; labels[i] indexes centroids
    inertia: float  # sum of squared distances to the assigned centroid (float64 sums)
    n_iter: int
    converged: bool

    @property
    def k_used(self) -> int:
        return len(self.centroids)


def _check(weights, k) -> np.ndarray:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"k must be an integer >= 1; got {k!r}")
    if k < 1:
        raise ConfigError(f"k must be >= 1; got {k}")
    x = np.asarray(weights)
    if x.dtype.kind not in "fiub":
        raise ConfigError(f"weights must be a numeric array; got dtype {x.dtype}")
    if x.size == 0:
        raise ConfigError("cannot cluster an empty array of weights")
    x = x.astype(np.float32, copy=False) if x.dtype.kind != "f" or x.dtype.itemsize > 4 else x
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ConfigError(f"weights contain {bad} NaN or inf value(s); cannot cluster them")
    return x


def init_centroids(xs: np.ndarray, k: int, init: str, seed: int = 0) -> np.ndarray:
    """Initial float64 centroids (sorted, distinct) from SORTED data ``xs``."""
    if init == "linear":
        c = np.linspace(float(xs[0]), float(xs[-1]), k)
    elif init == "density":
        # evenly spaced points on the CDF's y axis, mapped back to x
        pos = ((np.arange(k) + 0.5) / k * len(xs)).astype(np.int64)
        c = xs[np.minimum(pos, len(xs) - 1)].astype(np.float64)
    elif init == "random":
        uniq = np.unique(xs)
        rng = np.random.default_rng(seed)
        c = rng.choice(uniq, size=min(k, len(uniq)), replace=False).astype(np.float64)
    else:
        raise ConfigError(f"unknown k-means init {init!r}; choose one of {', '.join(INITS)}")
    return np.unique(c)  # sorted; duplicates (ties in quantiles) merged


def kmeans_1d_full(weights: np.ndarray, k: int, init: str = "linear", seed: int = 0,
                   max_iter: int = 100_000, tol: float = 0.0, accelerate: bool = True) -> KMeansResult:
    """Cluster ``weights`` (any shape) into at most ``k`` centroids; see module doc.

    ``tol`` > 0 also stops when the summed squared centroid move is <= ``tol`` * var(x)
    (scikit-learn's rule). The default tol 0 runs to the exact fixed point (or
    ``max_iter``): on 1-D data sklearn's 1e-4 stops far too early (10M Laplace weights,
    k=256: inertia 3-4x the fixed point's). ``accelerate`` over-relaxes the Lloyd step
    (safeguarded, so the inertia never rises): ~4x fewer iterations than plain Lloyd's ~2*10^4.
    """
    x = _check(weights, k)
    if init not in INITS:
        raise ConfigError(f"unknown k-means init {init!r}; choose one of {', '.join(INITS)}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1; got {max_iter!r}")
    if not tol >= 0:
        raise ConfigError(f"tol must be >= 0; got {tol}")
    flat = x.reshape(-1)
    xs = np.sort(flat)
    n = len(xs)
    # fewer distinct values than k: each value is its own exact centroid
    n_distinct = 1 + int(np.count_nonzero(xs[1:] != xs[:-1]))
    if n_distinct <= k:
        cents = np.unique(flat)
        labels = np.searchsorted(cents, flat).astype(np.int32)
        return KMeansResult(cents.astype(np.float32), labels.reshape(x.shape), 0.0, 0, True)

    s1 = _prefix_sums(xs)
    c = init_centroids(xs, k, init, seed)
    tol_abs = tol * float(xs.var()) if tol > 0 else 0.0
    lloyd = _lloyd_acc if accelerate else _lloyd
    c, it, converged = lloyd(xs, s1, c, int(max_iter), float(tol_abs))

    bounds = np.zeros(len(c) + 1, np.int64)
    bounds[-1] = n
    _assign(xs, c, np.full(len(c) + 1, -1, np.int64), bounds)
    keep = np.diff(bounds) > 0
    bounds = bounds[np.concatenate((keep, [True]))]  # drop empty clusters (they held no point)
    # Final centroids as exact cluster means: prefix-sum differences cancel catastrophically
    # for a tiny value beside large ones (e.g. 2e-30 next to -1 gives 0.0, a duplicate centroid).
    c = np.add.reduceat(xs.astype(np.float64), bounds[:-1]) / np.diff(bounds)
    _assign(xs, c, np.full(len(c) + 1, -1, np.int64), bounds)
    cents = c.astype(np.float32)
    mid = 0.5 * (c[1:] + c[:-1])
    labels = _label(flat, mid, float(xs[0]), float(xs[-1]))
    inertia = float(_inertia_sorted(xs, bounds, cents.astype(np.float64)))
    return KMeansResult(cents, labels.reshape(x.shape), inertia, int(it), bool(converged))


@numba.njit(cache=True, nogil=True)
def _prefix_sums(xs):
    """s[i] = sum of xs[:i] in float64 (one pass, no float64 copy of xs)."""
    s = np.empty(len(xs) + 1, np.float64)
    acc = 0.0
    s[0] = 0.0
    for i in range(len(xs)):
        acc += xs[i]
        s[i + 1] = acc
    return s


@numba.njit(cache=True, nogil=True)
def _count_le(xs, v, guess):
    """Number of entries of sorted ``xs`` that are <= v, galloping out from ``guess``.

    Boundaries move little between Lloyd iterations, so this costs O(log distance moved)
    instead of O(log n) random accesses.
    """
    n = len(xs)
    if guess < 0 or guess > n:
        return np.searchsorted(xs, v, side="right")
    if guess > 0 and xs[guess - 1] > v:  # answer < guess
        hi = guess - 1  # xs[hi] > v
        step = 1
        lo = hi - step
        while lo >= 0 and xs[lo] > v:
            hi = lo
            step *= 2
            lo = hi - step
        lo = max(lo, 0)
        return lo + np.searchsorted(xs[lo:hi], v, side="right")
    if guess < n and xs[guess] <= v:  # answer > guess
        lo = guess + 1  # xs[lo - 1] <= v
        step = 1
        hi = lo + step
        while hi <= n and xs[hi - 1] <= v:
            lo = hi
            step *= 2
            hi = lo + step
        hi = min(hi, n)
        return lo + np.searchsorted(xs[lo:hi], v, side="right")
    return guess


@numba.njit(cache=True, nogil=True)
def _relocate_empty(xs, s1, bounds, c, new, empty_idx):
    """Move each empty cluster's centroid (in index order) onto the far end of the cluster
    with the largest squared error (each donor used once; donors hold >= 2 distinct values).

    That point is then strictly closest to the moved centroid, so no codebook entry is wasted.
    """
    k = len(c)
    sse = np.empty(k)
    for j in range(k):
        lo, hi = bounds[j], bounds[j + 1]
        cnt = hi - lo
        if cnt > 0 and xs[lo] != xs[hi - 1]:  # rare event: an O(n) scan is fine
            m = (s1[hi] - s1[lo]) / cnt
            e = 0.0
            for i in range(lo, hi):
                e += (xs[i] - m) ** 2
            sse[j] = e
        else:
            sse[j] = -1.0
    for e in empty_idx:
        best = -1
        for j in range(k):
            if sse[j] >= 0 and (best < 0 or sse[j] > sse[best]):
                best = j
        if best < 0:
            return  # nothing left to split: the empty centroid keeps its place
        lo, hi = bounds[best], bounds[best + 1]
        m = new[best]
        new[e] = xs[lo] if m - xs[lo] > xs[hi - 1] - m else xs[hi - 1]
        sse[best] = -1.0


@numba.njit(cache=True, nogil=True)
def _update_means(xs, s1, bounds, c, new, empty_idx):
    """One Lloyd update from prefix sums: ``new[j]`` = mean of cluster j (sorted ``xs``
    split at ``bounds``); empty clusters are moved to where they cut the error most.
    Returns how many clusters were empty."""
    k = c.shape[0]
    n_empty = 0
    for j in range(k):
        cnt = bounds[j + 1] - bounds[j]
        if cnt > 0:
            new[j] = (s1[bounds[j + 1]] - s1[bounds[j]]) / cnt
        else:
            new[j] = c[j]
            empty_idx[n_empty] = j
            n_empty += 1
    if n_empty:
        _relocate_empty(xs, s1, bounds, c, new, empty_idx[:n_empty])
        new.sort()
    return n_empty


@numba.njit(cache=True, nogil=True)
def _lloyd(xs, s1, c, max_iter, tol_abs):
    """Plain Lloyd iterations on sorted ``xs`` with prefix sums ``s1``; returns
    (c, iters, converged)."""
    k = len(c)
    n = len(xs)
    bounds = np.empty(k + 1, np.int64)
    prev = np.full(k + 1, -1, np.int64)
    bounds[0] = 0
    bounds[k] = n
    c = c.copy()
    new = c.copy()
    empty_idx = np.empty(k, np.int64)
    it = 0
    while it < max_iter:
        it += 1
        same = it > 1
        for j in range(1, k):
            # cluster j-1 holds mid[j-2] < x <= mid[j-1]
            b = _count_le(xs, 0.5 * (c[j - 1] + c[j]), prev[j])
            bounds[j] = b
            if b != prev[j]:
                same = False
        if same:
            return c, it, True
        _update_means(xs, s1, bounds, c, new, empty_idx)
        shift = 0.0  # sum of squared centroid moves (sklearn's convergence measure)
        for j in range(k):
            shift += (new[j] - c[j]) ** 2
            c[j] = new[j]
        prev[:] = bounds
        if tol_abs > 0 and shift <= tol_abs:
            return c, it, True
    return c, it, False


@numba.njit(cache=True, nogil=True)
def _assign(xs, c, guess, bounds):
    """bounds[j] = number of xs <= midpoint(c[j-1], c[j]); returns True if it equals ``guess``."""
    same = True
    for j in range(1, len(c)):
        b = _count_le(xs, 0.5 * (c[j - 1] + c[j]), guess[j])
        bounds[j] = b
        if b != guess[j]:
            same = False
    return same


@numba.njit(cache=True, nogil=True)
def _objective(s1, bounds, c):
    """Inertia minus the constant sum(x^2): sum_j n_j c_j^2 - 2 c_j S_j (no cancellation)."""
    total = 0.0
    for j in range(len(c)):
        cnt = bounds[j + 1] - bounds[j]
        total += cnt * c[j] * c[j] - 2.0 * c[j] * (s1[bounds[j + 1]] - s1[bounds[j]])
    return total


@numba.njit(cache=True, nogil=True)
def _lloyd_acc(xs, s1, c, max_iter, tol_abs):
    """Lloyd with safeguarded over-relaxation: try c + w (T(c) - c) for a growing w, keep it
    only if its inertia (with its own assignment) is <= that of the plain step T(c) under
    the old assignment, which itself is <= the current inertia, so the objective still
    never increases. Converged = the exact Lloyd fixed point, c == means(assign(c))."""
    k = len(c)
    n = len(xs)
    b = np.empty(k + 1, np.int64)
    be = np.empty(k + 1, np.int64)
    b[0] = be[0] = 0
    b[k] = be[k] = n
    none = np.full(k + 1, -1, np.int64)
    c = c.copy()
    t = c.copy()
    ce = c.copy()
    empty_idx = np.empty(k, np.int64)
    _assign(xs, c, none, b)
    w = 1.0
    it = 0
    while it < max_iter:
        it += 1
        n_empty = _update_means(xs, s1, b, c, t, empty_idx)
        shift = 0.0
        for j in range(k):
            shift += (t[j] - c[j]) ** 2
        if shift == 0.0:
            return c, it, True
        accepted = False
        if w > 1.0 and n_empty == 0:
            ok = True
            for j in range(k):
                ce[j] = c[j] + w * (t[j] - c[j])
                if j > 0 and ce[j] <= ce[j - 1]:
                    ok = False
            if ok:
                same = _assign(xs, ce, b, be)
                if not same and _objective(s1, be, ce) <= _objective(s1, b, t):
                    c[:] = ce
                    b[:] = be
                    accepted = True
                    w = min(w * 1.5, 1e6)
        if not accepted:
            w = 2.0 if w <= 1.0 else 1.0  # after a rejection take one plain step, then retry
            c[:] = t
            be[:] = b
            _assign(xs, c, be, b)
        if tol_abs > 0 and shift <= tol_abs:
            return c, it, True
    return c, it, False


@numba.njit(cache=True, nogil=True)
def _label(flat, mid, lo, hi):
    """Number of ``mid`` entries strictly below each x (the cluster of x), via a bucket
    table over [lo, hi] so most lookups need no search at all."""
    nb = 4096
    out = np.empty(len(flat), np.int32)
    m = len(mid)
    scale = nb / (hi - lo) if hi > lo else 0.0
    start = np.empty(nb + 1, np.int32)  # label of each bucket's left edge
    j = 0
    for b in range(nb + 1):
        edge = lo + b / scale if scale > 0 else lo
        while j < m and mid[j] < edge:
            j += 1
        start[b] = j
    for i in range(len(flat)):
        v = np.float64(flat[i])
        b = int((v - lo) * scale)
        b = min(max(b, 0), nb)
        j = start[b]
        while j > 0 and mid[j - 1] >= v:  # float rounding of the edge: step back
            j -= 1
        while j < m and mid[j] < v:
            j += 1
        out[i] = j
    return out


@numba.njit(cache=True, nogil=True)
def _inertia_sorted(xs, bounds, cents):
    """Sum of squared errors, cluster j = xs[bounds[j]:bounds[j+1]]."""
    total = 0.0
    for j in range(len(cents)):
        cj = cents[j]
        for i in range(bounds[j], bounds[j + 1]):
            d = np.float64(xs[i]) - cj
            total += d * d
    return total


def kmeans_1d(weights: np.ndarray, k: int, init: str = "linear", seed: int = 0,
              max_iter: int = 100_000, tol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(centroids float32[k_used], labels int32 like weights)``; see ``kmeans_1d_full``."""
    r = kmeans_1d_full(weights, k, init=init, seed=seed, max_iter=max_iter, tol=tol)
    return r.centroids, r.labels


def inertia(weights: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Plain reference: sum over i of (w_i - centroids[labels_i])^2, in float64."""
    d = np.asarray(weights, np.float64).reshape(-1) - np.asarray(centroids, np.float64)[labels.reshape(-1)]
    return float(np.dot(d, d))
