"""Codebook (weight-shared) kernels against the plain numpy reference and a dense matmul."""

from __future__ import annotations

import numpy as np
import pytest

from nnshrink.runtime.kernels.codebook import (codebook_csr, codebook_dense, codebook_linear,
                                               codebook_linear_ref)

SPARSITIES = [0.0, 0.5, 0.9, 0.99, 1.0]


def shared(rng, rows, cols, sparsity, k):
    cb = np.sort(rng.standard_normal(k)).astype(np.float32)
    mask = rng.random((rows, cols)) >= sparsity
    if sparsity == 1.0:
        mask[:] = False
    codes = rng.integers(0, k, int(mask.sum())).astype(np.uint8)
    dense = np.zeros((rows, cols), np.float32)
    dense[mask] = cb[codes]
    return cb, mask, codes, dense


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("batch", [None, 1, 5, 64])
@pytest.mark.parametrize("k", [2, 16, 256])
def test_sparse_codebook_matches(sparsity, batch, k):
    rng = np.random.default_rng(int(sparsity * 100) + (batch or 0) + k)
    rows, cols = (int(v) for v in rng.integers(1, 120, 2))
    cb, mask, codes, dense = shared(rng, rows, cols, sparsity, k)
    w = codebook_csr(mask, codes, cb, (rows, cols))
    np.testing.assert_array_equal(w.to_dense(), dense)
    x = rng.standard_normal(cols if batch is None else (batch, cols)).astype(np.float32)
    b = rng.standard_normal(rows).astype(np.float32)
    got = codebook_linear(w, x, b)
    assert got.shape == x.shape[:-1] + (rows,)
    np.testing.assert_allclose(got, codebook_linear_ref(w, x, b), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, x @ dense.T + b, rtol=1e-4, atol=1e-4)
    if batch in (None, 1):
        np.testing.assert_allclose(codebook_linear(w, x, b, bins=True), got, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [None, 1, 3, 64])
@pytest.mark.parametrize("k", [1, 32, 256])
def test_dense_codebook_matches(batch, k):
    rng = np.random.default_rng(k + (batch or 0))
    rows, cols = (int(v) for v in rng.integers(1, 150, 2))
    cb = rng.standard_normal(k).astype(np.float32)
    codes = rng.integers(0, k, (rows, cols)).astype(np.uint8)
    w = codebook_dense(codes, cb, (rows, cols))
    x = rng.standard_normal(cols if batch is None else (batch, cols)).astype(np.float32)
    got = codebook_linear(w, x)
    np.testing.assert_allclose(got, codebook_linear_ref(w, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, x @ cb[codes].T, rtol=1e-4, atol=1e-4)


def test_mask_none_means_all_kept_and_codebook_limits():
    cb = np.array([-1, 0.5], np.float32)
    codes = np.array([0, 1, 1, 0, 1, 0], np.uint8)
    w = codebook_csr(None, codes, cb, (2, 3))
    np.testing.assert_array_equal(w.to_dense(), cb[codes].reshape(2, 3))
    with pytest.raises(ValueError, match="1..256"):
        codebook_csr(None, codes, np.zeros(300, np.float32), (2, 3))


@pytest.mark.parametrize("block_cols", [1, 5, 64, 4096])
def test_codebook_column_blocking_matches_reference(block_cols):
    rng = np.random.default_rng(block_cols)
    cb, mask, codes, dense = shared(rng, 29, 130, 0.85, 32)
    w = codebook_csr(mask, codes, cb, (29, 130))
    x = rng.standard_normal((6, 130)).astype(np.float32)
    got = codebook_linear(w, x, block_cols=block_cols)
    np.testing.assert_allclose(got, codebook_linear_ref(w, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, x @ dense.T, rtol=1e-4, atol=1e-4)


def test_codes_are_checked_before_any_kernel_trusts_them():
    mask = np.array([[True, False], [True, True]])
    cb = np.array([0.5, -1.0], np.float32)
    with pytest.raises(ValueError, match="2 codes for 3 kept positions"):
        codebook_csr(mask, np.zeros(2, np.uint8), cb, (2, 2))
    with pytest.raises(ValueError, match="code 2 out of range for a codebook of 2 entries"):
        codebook_csr(mask, np.array([0, 2, 1], np.uint8), cb, (2, 2))
    with pytest.raises(ValueError, match="code 5 out of range"):
        codebook_dense(np.array([[0, 5]], np.uint8), cb, (1, 2))
