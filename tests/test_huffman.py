import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nnshrink.encode.huffman import (MAX_CODE_LEN, CodecError, HuffmanCode, canonical_codes, check_lengths,
                                     code_lengths, code_lengths_ref, entropy_bits, histogram, huffman_decode,
                                     huffman_decode_ref, huffman_encode, huffman_encode_ref, pair_symbols)


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


@settings(max_examples=80, deadline=None)
@given(freqs=st.lists(st.integers(1, 10_000), min_size=2, max_size=48), max_len=st.integers(6, 16))
def test_package_merge_matches_plain_reference(freqs, max_len):
    f = np.array(freqs)
    fast, ref = code_lengths(f, max_len), code_lengths_ref(f, max_len)
    assert check_lengths(fast) is None and fast.max() <= max_len
    assert int(np.dot(fast.astype(np.int64), f)) == int(np.dot(ref.astype(np.int64), f))  # same optimal cost


def test_lengths_for_a_4096_symbol_pair_alphabet():
    rng = np.random.default_rng(0)
    f = rng.geometric(0.01, 4096) ** 2  # heavy tail: unrestricted Huffman would exceed 16 bits
    lengths = code_lengths(f)
    assert check_lengths(lengths) is None and lengths.max() <= MAX_CODE_LEN
    assert int(np.dot(lengths.astype(np.int64), f)) >= _huffman_cost(f.tolist())
    g = rng.integers(500, 1000, 4096)  # flat enough that the 16-bit limit does not bind
    assert int(np.dot(code_lengths(g).astype(np.int64), g)) == _huffman_cost(g.tolist())


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), base=st.integers(1, 64), skew=st.floats(0.1, 4.0), seed=st.integers(0, 2**32 - 1))
def test_pair_coding_round_trips(n, base, skew, seed):
    rng = np.random.default_rng(seed)
    p = np.exp(-skew * np.arange(base))
    x = rng.choice(base, size=n, p=p / p.sum()).astype(np.uint8)
    pairs = pair_symbols(x, base)
    expected = [int(x[i]) * base + (int(x[i + 1]) if i + 1 < n else 0) for i in range(0, n, 2)]
    np.testing.assert_array_equal(pairs, expected)
    code = HuffmanCode.from_symbols(pairs, base * base)
    data = huffman_encode(pairs, code)
    assert data == huffman_encode_ref(pairs, code)
    np.testing.assert_array_equal(huffman_decode(data, n, code, pair_base=base), x)


def test_pairs_close_the_gap_to_entropy():
    # two symbols at p = 0.34 (a shared layer's two biggest centroids): whole-bit codes lose 2-3%
    rng = np.random.default_rng(0)
    p = np.r_[0.34, 0.34, np.full(30, 0.32 / 30)]
    x = rng.choice(32, size=400_000, p=p).astype(np.uint8)
    h = entropy_bits(histogram(x, 32))
    single = 8 * len(huffman_encode(x, HuffmanCode.from_symbols(x, 32)))
    pairs = pair_symbols(x, 32)
    paired = 8 * len(huffman_encode(pairs, HuffmanCode.from_symbols(pairs, 1024)))
    assert single > 1.02 * h
    assert paired < 1.015 * h


def test_pair_decoder_refuses_bad_input():
    x = np.array([0, 1, 1, 0, 2], np.uint8)  # odd: last pair is (2, 0)
    pairs = pair_symbols(x, 3)
    code = HuffmanCode.from_symbols(pairs, 9)
    data = huffman_encode(pairs, code)
    np.testing.assert_array_equal(huffman_decode(data, 5, code, pair_base=3), x)
    odd = HuffmanCode.from_symbols(np.array([1, 3, 7], np.uint16), 9)  # pair 7 = (2, 1)
    bad = huffman_encode(np.array([1, 3, 7], np.uint16), odd)
    with pytest.raises(CodecError, match="odd count"):
        huffman_decode(bad, 5, odd, pair_base=3)  # last pair must be (s, 0)
    with pytest.raises(CodecError, match="1..64"):
        huffman_decode(data, 5, code, pair_base=65)
    with pytest.raises(CodecError, match="at most 4"):
        huffman_decode(data, 5, code, pair_base=2)  # pair symbols up to 8 need base >= 3
    big = HuffmanCode.from_lengths(np.r_[np.zeros(299, np.uint8), 1, 1])
    with pytest.raises(CodecError, match="at most 256"):
        huffman_decode(b"\x00", 1, big)  # a single-symbol stream cannot use symbols >= 256


def test_stream_golden_bytes_of_pair_coding():
    """SPEC.md `huffman_pairs`, by hand: k = 4; pairs (0,0) x 8, (1,2), (3,3), 20 times.
    Pair symbols 0 (160 times), 1*4+2 = 6 (20), 3*4+3 = 15 (20) -> lengths 1, 2, 2 ->
    canonical codes 0 -> '0', 6 -> '10', 15 -> '11'; one round is 12 bits
    000000001011, two rounds are the bytes 00 B0 0B."""
    from nnshrink.format.writer import encode_stream

    x = np.array(([0] * 16 + [1, 2, 3, 3]) * 20, np.uint8)
    coding, table, data = encode_stream(x, 2, 4, huffman=True)
    assert coding == "huffman_pairs"
    assert table == bytes([1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 2])
    assert data == bytes([0x00, 0xB0, 0x0B]) * 10
