"""The direct sparse convolution kernel against its numpy reference and torch's conv2d."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnshrink.runtime.kernels.codebook import codebook_csr
from nnshrink.runtime.kernels.sparse import csr_from_dense
from nnshrink.runtime.kernels.sparse_conv import sparse_conv2d, sparse_conv2d_ref

CASES = [  # out, in, kernel, stride, padding, dilation, groups, height, width
    (5, 6, 3, 1, (1, 1), 1, 1, 9, 10),
    (4, 6, 3, 2, (1, 1), 1, 2, 11, 12),
    (6, 3, 2, 1, (0, 2), 2, 3, 8, 9),
    (8, 4, 5, 3, (2, 2), 1, 1, 13, 14),
    (3, 2, 1, 1, (0, 0), 1, 1, 4, 4),
    (7, 1, 5, 1, (0, 0), 1, 1, 28, 28),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("sparsity", [0.0, 0.6, 0.97, 1.0])
def test_sparse_conv_matches_reference_and_torch(case, sparsity):
    co, ci, k, s, pad, d, g, h, w = case
    rng = np.random.default_rng(co * 31 + int(sparsity * 100))
    wt = rng.standard_normal((co, ci // g, k, k)).astype(np.float32)
    wt[rng.random(wt.shape) < sparsity] = 0
    x = rng.standard_normal((2, ci, h, w)).astype(np.float32)
    b = rng.standard_normal(co).astype(np.float32)
    a = csr_from_dense(wt.reshape(co, -1))
    got = sparse_conv2d(a.indptr, a.indices, a.data, x, wt.shape, b, stride=s, padding=pad, dilation=d, groups=g)
    ref = sparse_conv2d_ref(wt, x, b, stride=s, padding=pad, dilation=d, groups=g)
    oracle = F.conv2d(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b), s, pad, d, g).numpy()
    assert got.shape == oracle.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, oracle, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES[:4])
def test_codebook_conv_matches_torch(case):
    co, ci, k, s, pad, d, g, h, w = case
    rng = np.random.default_rng(co)
    cb = rng.standard_normal(32).astype(np.float32)
    shape = (co, ci // g * k * k)
    mask = rng.random(shape) < 0.3
    codes = rng.integers(0, 32, int(mask.sum())).astype(np.uint8)
    cw = codebook_csr(mask, codes, cb, shape)
    dense = cw.to_dense().reshape(co, ci // g, k, k)
    x = rng.standard_normal((3, ci, h, w)).astype(np.float32)
    got = sparse_conv2d(cw.indptr, cw.indices, None, x, dense.shape, None, stride=s, padding=pad, dilation=d,
                        groups=g, codes=cw.codes, codebook=cw.codebook)
    oracle = F.conv2d(torch.from_numpy(x), torch.from_numpy(dense), None, s, pad, d, g).numpy()
    np.testing.assert_allclose(got, oracle, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, sparse_conv2d_ref(dense, x, stride=s, padding=pad, dilation=d, groups=g),
                               rtol=1e-4, atol=1e-4)


def test_output_smaller_than_kernel_is_empty():
    wt = np.ones((2, 1, 5, 5), np.float32)
    a = csr_from_dense(wt.reshape(2, -1))
    x = np.ones((1, 1, 3, 3), np.float32)
    assert sparse_conv2d(a.indptr, a.indices, a.data, x, wt.shape).shape == (1, 2, 0, 0)
