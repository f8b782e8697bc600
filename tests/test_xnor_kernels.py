"""XNOR + popcount kernels against plain numpy / float +-1 references."""

import numpy as np
import pytest
import torch

from nnshrink.runtime.kernels import xnor as X

SHAPES = [(1, 1, 1), (3, 63, 5), (4, 64, 7), (5, 65, 3), (2, 127, 9), (7, 128, 4), (6, 1000, 11),
          (9, 1100, 6), (1, 9216, 17), (13, 2050, 10)]


def _rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_pack_rows_matches_reference_and_pads_with_zero_bits(m, k, n):
    x = _rand((m, k), k)
    x[0, :3] = 0.0  # sign(0) = +1
    ref = X.pack_rows_ref(x)
    assert ref.shape == (m, (k + 63) // 64)
    np.testing.assert_array_equal(X.pack_rows(x), ref)
    np.testing.assert_array_equal(X.pack_rows(x, transpose=True), ref.T)
    np.testing.assert_array_equal(X.unpack_rows_ref(ref, k), np.where(x >= 0, 1.0, -1.0))
    if k % 64:
        assert not np.any(ref[:, -1] >> np.uint64(k % 64))  # padding bits are zero


def test_pack_bit_order_is_little_endian():
    x = -np.ones((1, 70), np.float32)
    x[0, 0] = x[0, 3] = x[0, 64] = 1
    np.testing.assert_array_equal(X.pack_rows(x)[0], np.array([0b1001, 1], np.uint64))


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_gemm_matches_popcount_reference_and_float_product(m, k, n):
    x, w = _rand((m, k), 1 + k), _rand((n, k), 2 + k)
    alpha = np.abs(_rand((n,), 3)) + 0.1
    a, b = X.pack_rows(x), X.pack_rows(w)
    got = X.xnor_gemm(a, b, k, alpha)
    np.testing.assert_array_equal(got, X.xnor_gemm_ref(a, b, k, alpha))
    pm = np.where(w >= 0, 1.0, -1.0).astype(np.float32)
    np.testing.assert_allclose(got, X.xnor_matmul_ref(x, pm, alpha), rtol=1e-6, atol=1e-4)
    # fused sign-and-pack path, both the wide and the narrow (transposed) kernels
    np.testing.assert_allclose(X.xnor_matmul(x, b, k, alpha), got, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(X.xnor_matmul(x, b, k, alpha, channels_first=True), got.T, rtol=1e-6, atol=1e-4)


def test_padding_does_not_change_dot_products():
    # k = 65: one real bit in the second word; all-equal vectors must give +k, opposite -k
    x = np.ones((1, 65), np.float32)
    b = X.pack_rows(np.ones((2, 65), np.float32) * np.array([[1], [-1]], np.float32))
    np.testing.assert_array_equal(X.xnor_gemm(X.pack_rows(x), b, 65), [[65.0, -65.0]])
    np.testing.assert_array_equal(X.xnor_matmul(x, b, 65), [[65.0, -65.0]])


def test_shape_mismatch_is_an_error():
    b = X.pack_rows(np.ones((2, 100), np.float32))
    with pytest.raises(ValueError):
        X.xnor_matmul(np.ones((1, 99), np.float32), b, 100)
    with pytest.raises(ValueError):
        X.xnor_matmul(np.ones((1, 200), np.float32), b, 200)


@pytest.mark.parametrize("b,c,h,n,k,stride,pad", [(2, 3, 9, 4, 3, 1, 0), (1, 20, 12, 50, 5, 1, 0),
                                                  (3, 7, 8, 5, 3, 1, 1), (2, 70, 6, 3, 3, 2, 1),
                                                  (1, 1, 5, 2, 5, 1, 2), (2, 130, 5, 3, 3, 1, 1),
                                                  (1, 64, 4, 2, 3, 1, 0), (2, 64, 7, 5, 3, 2, 1),
                                                  (1, 128, 6, 9, 3, 1, 1), (1, 64, 5, 3, 5, 1, 2),
                                                  (1, 64, 3, 4, 3, 3, 2), (1, 64, 9, 6, 3, 2, 0),
                                                  (1, 64, 40, 5, 3, 1, 1)])
def test_conv_matches_float_conv_of_signs(b, c, h, n, k, stride, pad):
    rng = np.random.default_rng(b * 100 + c)
    x = rng.standard_normal((b, c, h, h)).astype(np.float32)
    w = rng.standard_normal((n, c, k, k)).astype(np.float32)
    alpha = np.abs(rng.standard_normal(n)).astype(np.float32)
    packed = X.pack_conv_weight(w)
    np.testing.assert_array_equal(X.pack_conv_weight(w >= 0), packed)
    got = X.xnor_conv2d(x, packed, (k, k), alpha, stride, pad)
    pm = np.where(w >= 0, 1.0, -1.0).astype(np.float32)
    np.testing.assert_allclose(got, X.xnor_conv2d_ref(x, pm, alpha, stride, pad), rtol=1e-5, atol=1e-4)
    if pad == 0:  # without padding it is exactly torch's conv of the signs
        ref = torch.nn.functional.conv2d(torch.where(torch.from_numpy(x) >= 0, 1.0, -1.0),
                                         torch.from_numpy(pm), stride=stride).numpy() * alpha[None, :, None, None]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


def test_popcount_intrinsic_counts_bits():
    from numba import njit

    @njit
    def pc(v):
        return X.popcount64(v)

    for v in [0, 1, 0xFF, 2**63, 2**64 - 1, 0x5555555555555555]:
        assert pc(np.uint64(v)) == bin(v).count("1")


@pytest.mark.parametrize("m,k,n", [(1100, 200, 9), (513, 64, 4), (1030, 1024, 6), (4, 9216, 9), (2, 700, 13),
                                   (9, 3000, 4099)])
def test_blocked_kernels_equal_popcount_reference_exactly(m, k, n):
    # row blocks of the fused short-K kernel (512 rows), 4x4 / 1x4 register blocks and their
    # tails, B tiles of the wide kernel (n > tile): all must equal the plain reference bit for bit
    x, w = _rand((m, k), 7 + k), _rand((n, k), 8 + n)
    x[:, :5] = 0.0
    alpha = np.abs(_rand((n,), 9)) + 0.1
    a, b = X.pack_rows(x), X.pack_rows(w)
    ref = X.xnor_gemm_ref(a, b, k, alpha)
    np.testing.assert_array_equal(X.xnor_gemm(a, b, k, alpha), ref)
    np.testing.assert_array_equal(X.xnor_matmul(x, b, k, alpha), ref)
    np.testing.assert_array_equal(X.xnor_matmul(x, b, k, alpha, channels_first=True), ref.T)
    if X.n_words(k) <= X._NARROW_WORDS:
        out_t = np.empty((n, m), np.float32)
        X._gemm_narrow_t(np.ascontiguousarray(a.T), b, k, alpha, out_t)
        np.testing.assert_array_equal(out_t, ref.T)
