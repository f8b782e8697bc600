import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nnshrink.errors import ConfigError
from nnshrink.quantize.kmeans import init_centroids, inertia, kmeans_1d, kmeans_1d_full


def lloyd_reference(x, c, iters=100_000):
    """Plain O(nk) Lloyd: nearest centroid (ties to the lower one), means, and each empty
    cluster moved to the far end of the largest-error cluster; stop when labels are stable."""
    x = np.asarray(x, np.float64).reshape(-1)
    c = np.array(c, np.float64)
    labels = None
    for _ in range(iters):
        mid = 0.5 * (c[1:] + c[:-1])
        new_labels = np.array([np.sum(mid < v) for v in x])
        if labels is not None and np.array_equal(labels, new_labels):
            break
        labels = new_labels
        new = c.copy()
        sse = np.full(len(c), -1.0)
        for j in range(len(c)):
            pts = x[labels == j]
            if len(pts):
                new[j] = pts.mean()
                if pts.min() != pts.max():
                    sse[j] = ((pts - new[j]) ** 2).sum()
        for j in range(len(c)):
            if not np.any(labels == j) and sse.max() >= 0:
                d = int(np.argmax(sse))
                pts = x[labels == d]
                new[j] = pts.min() if new[d] - pts.min() > pts.max() - new[d] else pts.max()
                sse[d] = -1.0
        c = np.sort(new)
    used = np.unique(labels)
    return c[used], np.searchsorted(used, labels)


@pytest.mark.parametrize("init", ["linear", "density", "random"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_plain_lloyd(init, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, 300), rng.normal(4, 0.3, 60)]).astype(np.float32)
    r = kmeans_1d_full(x, 8, init=init, seed=seed, accelerate=False)
    c0 = init_centroids(np.sort(x).astype(np.float64), 8, init, seed)
    ref_c, ref_l = lloyd_reference(x, c0)
    assert r.converged
    np.testing.assert_allclose(r.centroids, ref_c.astype(np.float32), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(r.labels, ref_l)
    assert r.inertia == pytest.approx(inertia(x, r.centroids, r.labels), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-100, 100, width=32), min_size=1, max_size=200), st.integers(1, 16),
       st.sampled_from(["linear", "density", "random"]))
def test_fixed_point_properties(values, k, init):
    x = np.array(values, np.float32)
    c, labels = kmeans_1d(x, k, init=init)
    assert labels.shape == x.shape and labels.dtype == np.int32
    assert 1 <= len(c) <= k and c.dtype == np.float32
    assert np.all(np.diff(c) > 0)
    assert set(np.unique(labels)) == set(range(len(c)))  # no empty cluster survives
    # every point sits at its nearest centroid and centroids are cluster means
    d = np.abs(x[:, None].astype(np.float64) - c[None, :].astype(np.float64))
    assert np.all(d[np.arange(len(x)), labels] <= d.min(1) + 1e-4 * (1 + np.abs(x)))
    for j in range(len(c)):
        assert c[j] == pytest.approx(float(x[labels == j].astype(np.float64).mean()), rel=1e-5, abs=1e-5)


def test_fewer_distinct_values_than_k():
    x = np.array([3, 1, 1, 3, 2, 2, 2], np.float32)
    r = kmeans_1d_full(x, 16)
    np.testing.assert_array_equal(r.centroids, [1, 2, 3])
    np.testing.assert_array_equal(r.centroids[r.labels], x)
    assert r.inertia == 0.0 and r.k_used == 3


def test_k1_is_mean_and_2d_shape_kept():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    c, labels = kmeans_1d(x, 1)
    assert c.tolist() == [5.5] and labels.shape == (3, 4) and not labels.any()


def test_empty_clusters_relocated():
    # linear init over [0, 10.1] puts centroids at 0, 3.37, 6.73, 10.1: the middle two start
    # empty and must be moved into the two real groups, so all 4 codes are used
    x = np.array([0, 0.1, 0.2, 9.9, 10, 10.1, 0.05, 9.95], np.float32)
    r = kmeans_1d_full(x, 4, init="linear", accelerate=False)
    assert r.k_used == 4 and r.converged
    assert (r.centroids < 5).sum() == 2
    ref_c, ref_l = lloyd_reference(x, init_centroids(np.sort(x).astype(np.float64), 4, "linear"))
    np.testing.assert_allclose(r.centroids, ref_c, rtol=1e-6)
    np.testing.assert_array_equal(r.labels, ref_l)
    assert r.inertia < 0.02


@pytest.mark.parametrize("init", ["linear", "density"])
def test_accelerated_reaches_a_fixed_point_no_worse(init):
    x = np.random.default_rng(3).laplace(size=50_000).astype(np.float32)
    fast = kmeans_1d_full(x, 64, init=init)
    plain = kmeans_1d_full(x, 64, init=init, accelerate=False)
    assert fast.converged and plain.converged and fast.k_used == 64
    assert fast.n_iter < plain.n_iter
    assert fast.inertia <= plain.inertia * 1.01
    # a fixed point: re-running plain Lloyd from its centroids changes nothing
    c64 = fast.centroids.astype(np.float64)
    mid = 0.5 * (c64[1:] + c64[:-1])
    labels = np.searchsorted(mid, x.astype(np.float64), side="left")
    np.testing.assert_array_equal(labels, fast.labels)
    means = np.array([x[labels == j].astype(np.float64).mean() for j in range(64)])
    np.testing.assert_allclose(fast.centroids, means.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_random_init_deterministic():
    x = np.random.default_rng(5).normal(size=2000).astype(np.float32)
    a = kmeans_1d(x, 16, init="random", seed=3)
    b = kmeans_1d(x, 16, init="random", seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_linear_beats_nothing_and_inertia_decreases_with_k():
    x = np.random.default_rng(0).laplace(size=5000).astype(np.float32)
    iner = [kmeans_1d_full(x, k).inertia for k in (2, 4, 8, 16, 32)]
    assert all(a > b for a, b in zip(iner, iner[1:]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_rejected(bad):
    x = np.array([0.1, bad, 0.3], np.float32)
    with pytest.raises(ConfigError, match="NaN or inf"):
        kmeans_1d(x, 2)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "4"])
def test_bad_k(k):
    with pytest.raises(ConfigError, match="k must be"):
        kmeans_1d(np.ones(4, np.float32), k)


def test_bad_init_and_empty():
    with pytest.raises(ConfigError, match="unknown k-means init"):
        kmeans_1d(np.arange(4, dtype=np.float32), 2, init="kmeans++")
    with pytest.raises(ConfigError, match="empty"):
        kmeans_1d(np.zeros(0, np.float32), 2)
    with pytest.raises(ConfigError, match="max_iter"):
        kmeans_1d(np.arange(4, dtype=np.float32), 2, max_iter=0)


def test_tol_stops_early_max_iter_reports_not_converged():
    x = np.random.default_rng(1).normal(size=20000).astype(np.float32)
    exact = kmeans_1d_full(x, 64)
    loose = kmeans_1d_full(x, 64, tol=1e-4)
    capped = kmeans_1d_full(x, 64, max_iter=2)
    assert exact.converged and loose.converged and not capped.converged
    assert loose.n_iter < exact.n_iter and capped.n_iter == 2
    assert exact.inertia <= loose.inertia


def test_tiny_value_beside_large_ones_keeps_its_own_centroid():
    # found by hypothesis: prefix sums cancelled 2.4e-30 to 0.0, duplicating a centroid
    x = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 2.367046706793192e-30, -1.0], np.float32)
    c, labels = kmeans_1d(x, 6, init="random")
    assert np.all(np.diff(c) > 0)
    for j in range(len(c)):
        assert c[j] == np.float32(x[labels == j].astype(np.float64).mean())
