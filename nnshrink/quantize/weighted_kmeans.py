"""Exact 1-D k-means with per-value importance weights (sensitivity-weighted sharing).

Post-training sharing should spend its centroids where the network is sensitive
(SqueezeLLM, 2023): minimise sum_i s_i (x_i - c[label_i])^2 with s_i the importance of
weight i (a Fisher-diagonal entry). In one dimension the weighted problem keeps the
structure ``kmeans.py`` exploits: each cluster is still a contiguous run of the sorted
values bounded by centroid midpoints (assignment does not depend on s_i), and each
centroid is the s-weighted mean of its run. So with prefix sums of s and s*x over the
sorted values, one Lloyd iteration costs O(k log n) and runs to the exact fixed point.

``weighted_kmeans_1d(x, s, k)`` with all s_i equal gives the plain k-means fixed point
reached from the same (linear) start; ``inertia_weighted`` is the plain
reference for the objective.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .kmeans import KMeansResult, _check


def _check_importance(s, shape) -> np.ndarray:
    s = np.asarray(s, np.float64)
    if s.shape != tuple(shape):
        raise ConfigError(f"importance weights must have the values' shape {tuple(shape)}; got {s.shape}")
    if not np.isfinite(s).all():
        raise ConfigError(f"importance weights hold {int((~np.isfinite(s)).sum())} NaN or inf value(s)")
    if (s < 0).any():
        raise ConfigError(f"importance weights must be >= 0; got min {float(s.min()):.3g}")
    return s


def weighted_kmeans_1d(values: np.ndarray, importance: np.ndarray, k: int, *, max_iter: int = 10_000,
                       floor: float = 1e-3) -> KMeansResult:
    """Cluster ``values`` into at most ``k`` centroids minimising the importance-weighted
    squared error. ``floor`` (a fraction of the mean importance) is added to every weight,
    so values the calibration never touched still pull on the centroids a little."""
    x = _check(values, k)
    s = _check_importance(importance, x.shape)
    flat = x.reshape(-1).astype(np.float64)
    sw = s.reshape(-1) + floor * (float(s.mean()) if s.size else 0.0)
    if not sw.any():
        sw = np.ones_like(sw)
    order = np.argsort(flat, kind="stable")
    xs, ws = flat[order], sw[order]
    uniq = np.unique(xs)
    if len(uniq) <= k:  # each distinct value is its own exact centroid
        labels = np.searchsorted(uniq, flat).astype(np.int32)
        return KMeansResult(uniq.astype(np.float32), labels.reshape(x.shape), 0.0, 0, True)
    W = np.concatenate(([0.0], np.cumsum(ws)))
    S = np.concatenate(([0.0], np.cumsum(ws * xs)))
    # start: k values evenly spaced between min and max (Deep Compression's "linear" init: it
    # keeps centroids for the rare large weights, which quantile starts lose)
    c = np.linspace(xs[0], xs[-1], k)
    prev, it, converged = None, 0, False
    while it < max_iter:
        it += 1
        b = np.concatenate(([0], np.searchsorted(xs, 0.5 * (c[1:] + c[:-1]), side="right"), [len(xs)]))
        if prev is not None and np.array_equal(b, prev):
            converged = True
            break
        mass = W[b[1:]] - W[b[:-1]]
        new = np.where(mass > 0, (S[b[1:]] - S[b[:-1]]) / np.where(mass > 0, mass, 1.0), c)
        c, prev = np.sort(new), b
    counts = np.diff(prev)
    c = c[counts > 0] if prev is not None and (counts > 0).sum() >= 1 else c
    c = np.unique(c)
    cents = c.astype(np.float32)
    mids = 0.5 * (cents[1:].astype(np.float64) + cents[:-1])
    labels = np.searchsorted(mids, flat, side="left").astype(np.int32)
    return KMeansResult(cents, labels.reshape(x.shape), inertia_weighted(x, s + 0.0, cents, labels), it, converged)


def nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centroids`` for every value (ties go low)."""
    c = np.asarray(centroids, np.float64)
    return np.searchsorted(0.5 * (c[1:] + c[:-1]), np.asarray(values, np.float64), side="left").astype(np.int32)


def inertia_weighted(values, importance, centroids, labels) -> float:
    """Plain reference: sum_i s_i (x_i - centroids[labels_i])^2 in float64."""
    d = np.asarray(values, np.float64).reshape(-1) - np.asarray(centroids, np.float64)[np.asarray(labels).reshape(-1)]
    return float(np.dot(np.asarray(importance, np.float64).reshape(-1), d * d))
