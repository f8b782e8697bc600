"""The adaptive range coder (encode/adaptive.py): numba kernels against the plain references,
pinned bytes, and bad streams refused without reading past the end."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nnshrink.encode import adaptive as A
from nnshrink.encode.sparse import gaps_from_mask
from nnshrink.format.writer import encode_stream


def test_golden_bytes_of_the_coder():
    # pinned from the plain references (SPEC.md `adaptive`); the kernels must agree
    cases = [(np.eye(4, dtype=bool), b"\x83]\xf6\x80\x00"), (np.zeros((2, 3), bool), b"\x00\x00\x00\x00")]
    for mask, want in cases:
        assert A.encode_mask_ref(mask) == want and A.encode_mask(mask) == want
    sym = np.array([0, 1, 2, 3, 3, 3], np.uint8)
    assert A.encode_symbols_ref(sym, 2) == b"/=@\x01@" == A.encode_symbols(sym, 2)


mask_shapes = st.lists(st.integers(1, 13), min_size=1, max_size=4).map(tuple)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=mask_shapes, density=st.sampled_from([0.0, 0.02, 0.3, 0.9, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_mask_kernel_matches_reference_and_round_trips(shape, density, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < density
    data = A.encode_mask(mask)
    assert data == A.encode_mask_ref(mask)
    back, count = A.decode_mask(data, shape)
    assert count == int(mask.sum()) and np.array_equal(back, mask)
    np.testing.assert_array_equal(A.decode_mask_ref(data, shape), mask)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bits=st.integers(1, 8), n=st.integers(0, 300), skew=st.floats(0.0, 3.0), seed=st.integers(0, 2**32 - 1))
def test_symbol_kernel_matches_reference_and_round_trips(bits, n, skew, seed):
    rng = np.random.default_rng(seed)
    p = np.exp(-skew * np.arange(1 << bits))
    sym = rng.choice(1 << bits, n, p=p / p.sum()).astype(np.uint8)
    data = A.encode_symbols(sym, bits)
    assert data == A.encode_symbols_ref(sym, bits)
    np.testing.assert_array_equal(A.decode_symbols(data, n, bits), sym)
    np.testing.assert_array_equal(A.decode_symbols_ref(data, n, bits), sym)


def test_structured_mask_costs_less_than_its_order0_entropy():
    # dead columns and rows, as pruning leaves them: the contexts find them, no table needed
    rng = np.random.default_rng(1)
    mask = (rng.random((200, 300)) < 0.15) & (rng.random(300) < 0.4)[None, :] & (rng.random(200) < 0.7)[:, None]
    p = mask.mean()
    h0 = mask.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8
    gaps = gaps_from_mask(mask, 5)
    coding, table, stream = encode_stream(gaps, 5, 32, huffman=True)
    assert len(A.encode_mask(mask)) < 0.8 * min(h0, len(stream) + len(table))  # measured: 1433 vs 1910 / 1945


def test_cap_and_bad_streams():
    rng = np.random.default_rng(2)
    mask = rng.random((40, 50)) < 0.3
    data = A.encode_mask(mask)
    assert A.encode_mask(mask, cap=len(data) - 1) is None and A.encode_mask(mask, cap=len(data)) == data
    assert A.decode_mask(data[:-1], mask.shape)[0] is None  # ends early
    assert A.decode_mask(data + b"\0", mask.shape) == (None, A.ERR_TRAILING)
    assert A.decode_mask(b"\0\0\0", mask.shape) == (None, A.ERR_PAST_END)
    sym = rng.integers(0, 32, 500).astype(np.uint8)
    s = A.encode_symbols(sym, 5)
    assert A.decode_symbols(s[:-2], 500, 5) is None and A.decode_symbols(s + b"\1", 500, 5) is None
    with pytest.raises(ValueError):
        A.decode_mask_ref(data[:-1], mask.shape)
    for junk in (bytes(range(256)) * 4, b"\xff" * 64):  # garbage decodes to some mask or an error, never a crash
        out, count = A.decode_mask(junk, (30, 30))
        assert out is None or count == int(out.sum())
