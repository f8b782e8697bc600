"""The numba CSR kernels against the plain numpy reference and a dense matmul."""

from __future__ import annotations

import numpy as np
import pytest

from nnshrink.runtime.kernels.sparse import CSR, csr_from_dense, csr_from_mask, csr_linear, csr_linear_ref, index_dtype

SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]


def pruned(rng, rows, cols, sparsity):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) < sparsity] = 0
    if sparsity == 1.0:
        w[:] = 0
    return w


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("batch", [None, 1, 7, 64])
def test_matches_reference_and_dense(sparsity, batch):
    rng = np.random.default_rng(int(sparsity * 100) + (batch or 0))
    rows, cols = rng.integers(1, 130, 2)
    w = pruned(rng, rows, cols, sparsity)
    a = csr_from_dense(w)
    x = rng.standard_normal(cols if batch is None else (batch, cols)).astype(np.float32)
    b = rng.standard_normal(rows).astype(np.float32)
    got = csr_linear(a, x, b)
    assert got.shape == (x.shape[:-1] + (rows,))
    np.testing.assert_allclose(got, csr_linear_ref(a, x, b), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, x @ w.T + b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(csr_linear(a, x), x @ w.T, rtol=1e-4, atol=1e-4)


def test_csr_layout():
    w = np.array([[0, 2, 0, 3], [0, 0, 0, 0], [1, 0, 0, 0]], np.float32)
    a = csr_from_dense(w)
    assert a.shape == (3, 4) and a.nnz == 3
    assert a.indptr.tolist() == [0, 2, 2, 3]
    assert a.indices.tolist() == [1, 3, 0] and a.indices.dtype == np.uint16
    assert a.data.tolist() == [2, 3, 1]
    np.testing.assert_array_equal(a.to_dense(), w)
    m = csr_from_mask(w != 0, w[w != 0])
    np.testing.assert_array_equal(m.to_dense(), w)


def test_wide_layer_uses_int32_indices():
    assert index_dtype(65536) == np.uint16 and index_dtype(65537) == np.int32
    rng = np.random.default_rng(3)
    cols = 70000
    mask = np.zeros((2, cols), bool)
    mask[0, [0, 65535, 65536, 69999]] = True
    mask[1, 66000] = True
    vals = rng.standard_normal(5).astype(np.float32)
    a = csr_from_mask(mask, vals)
    assert a.indices.dtype == np.int32
    x = rng.standard_normal((3, cols)).astype(np.float32)
    np.testing.assert_allclose(csr_linear(a, x), x @ a.to_dense().T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(csr_linear(a, x[0]), csr_linear_ref(a, x[0]), rtol=1e-5, atol=1e-5)


def test_empty_rows_give_bias():
    a = CSR((3, 5), np.zeros(4, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.float32))
    b = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(csr_linear(a, np.ones((2, 5), np.float32), b), np.tile(b, (2, 1)))


@pytest.mark.parametrize("block_cols", [1, 3, 16, 1000])
@pytest.mark.parametrize("batch", [2, 9])
def test_column_blocking_matches_reference(block_cols, batch):
    """Every block size gives the unblocked answer: no kept weight skipped or counted twice."""
    rng = np.random.default_rng(block_cols + batch)
    w = pruned(rng, 37, 101, 0.8)
    a = csr_from_dense(w)
    x = rng.standard_normal((batch, 101)).astype(np.float32)
    b = rng.standard_normal(37).astype(np.float32)
    got = csr_linear(a, x, b, block_cols=block_cols)
    np.testing.assert_allclose(got, csr_linear_ref(a, x, b), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, x @ w.T + b, rtol=1e-4, atol=1e-4)


def test_value_count_must_match_the_mask():
    mask = np.array([[True, False], [True, True]])
    with pytest.raises(ValueError, match="2 values for 3 kept positions"):
        csr_from_mask(mask, np.ones(2, np.float32))
