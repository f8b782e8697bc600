import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nnshrink.encode.huffman import (MAX_CODE_LEN, CodecError, HuffmanCode, canonical_codes, check_lengths,
                                     code_lengths, entropy_bits, histogram, huffman_decode, huffman_decode_ref,
                                     huffman_encode, huffman_encode_ref)


def _huffman_cost(freqs):
    """Optimal unrestricted cost (sum of merged weights) via a heap: the plain reference."""
    import heapq
    h = [f for f in freqs if f > 0]
    if len(h) == 1:
        return h[0]
    heapq.heapify(h)
    cost = 0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        cost += a + b
        heapq.heappush(h, a + b)
    return cost


@settings(max_examples=60, deadline=None)
@given(freqs=st.lists(st.integers(0, 10_000), min_size=1, max_size=64))
def test_lengths_are_optimal_and_complete(freqs):
    f = np.array(freqs)
    if not (f > 0).any():
        assert not code_lengths(f).any()
        return
    lengths = code_lengths(f)
    assert check_lengths(lengths) is None
    assert ((lengths > 0) == (f > 0)).all()
    assert int(np.dot(lengths.astype(np.int64), f)) == _huffman_cost(freqs)


def test_length_limit_by_package_merge():
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    lengths = code_lengths(np.array(fib))
    assert lengths.max() == MAX_CODE_LEN  # unrestricted Huffman would need 29 bits
    assert check_lengths(lengths) is None
    small = code_lengths(np.array(fib[:10]), max_len=5)
    assert small.max() <= 5 and check_lengths(small) is None


def test_canonical_codes_known_example():
    # lengths A=2 B=1 C=3 D=3 -> B=0, A=10, C=110, D=111 (RFC 1951 style)
    np.testing.assert_array_equal(canonical_codes(np.array([2, 1, 3, 3])), [0b10, 0b0, 0b110, 0b111])


@pytest.mark.parametrize("lengths,ok", [([1, 1], True), ([1], True), ([2], False), ([1, 2], False),
                                        ([1, 1, 1], False), ([0, 0], False), ([17, 1], False), ([1, 2, 2], True)])
def test_check_lengths(lengths, ok):
    assert (check_lengths(np.array(lengths)) is None) == ok


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 2000), alphabet=st.integers(1, 256), skew=st.floats(0.1, 3.0), seed=st.integers(0, 2**32 - 1))
def test_kernels_match_reference_and_round_trip(n, alphabet, skew, seed):
    rng = np.random.default_rng(seed)
    p = np.exp(-skew * np.arange(alphabet) / max(alphabet / 8, 1))
    x = rng.choice(alphabet, size=n, p=p / p.sum()).astype(np.uint8)
    code = HuffmanCode.from_symbols(x, alphabet)
    data = huffman_encode(x, code)
    assert data == huffman_encode_ref(x, code)
    np.testing.assert_array_equal(huffman_decode(data, n, code), x)
    np.testing.assert_array_equal(huffman_decode_ref(data, n, code), x)


def test_single_symbol_stream():
    x = np.full(17, 3, np.uint8)
    code = HuffmanCode.from_symbols(x, 8)
    data = huffman_encode(x, code)
    assert data == b"\x00\x00\x00"
    np.testing.assert_array_equal(huffman_decode(data, 17, code), x)
    with pytest.raises(CodecError):
        huffman_decode(b"\x80\x00\x00", 17, code)  # '1' is no code


def test_decoder_refuses_bad_streams():
    x = np.array([0, 1, 2, 3] * 10, np.uint8)
    code = HuffmanCode.from_symbols(x, 4)
    data = huffman_encode(x, code)
    with pytest.raises(CodecError):
        huffman_decode(data + b"\x00", len(x), code)  # trailing byte
    with pytest.raises(CodecError):
        huffman_decode(data[:-1], len(x), code)  # truncated
    with pytest.raises(CodecError):
        huffman_decode(data, 10_000, code)  # more symbols than bits
    with pytest.raises(CodecError):
        HuffmanCode.from_lengths(np.array([1, 1, 1]))


def test_close_to_entropy():
    rng = np.random.default_rng(1)
    p = np.exp(-0.5 * ((np.arange(32) - 16) / 5) ** 2)
    x = rng.choice(32, size=200_000, p=p / p.sum()).astype(np.uint8)
    code = HuffmanCode.from_symbols(x, 32)
    bits = len(huffman_encode(x, code)) * 8
    assert bits <= 1.015 * entropy_bits(histogram(x, 32))
