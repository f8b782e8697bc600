import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nnshrink.encode.bitpack import pack_bits, pack_bits_ref, packed_nbytes, unpack_bits, unpack_bits_ref


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_pack_matches_reference_and_round_trips(bits, n, seed):
    v = np.random.default_rng(seed).integers(0, 1 << bits, n).astype(np.uint8)
    packed = pack_bits(v, bits)
    assert packed == pack_bits_ref(v, bits)
    assert len(packed) == packed_nbytes(n, bits)
    np.testing.assert_array_equal(unpack_bits(packed, n, bits), v)
    np.testing.assert_array_equal(unpack_bits_ref(packed, n, bits), v)


def test_pack_is_msb_first():
    assert pack_bits(np.array([1, 2, 3], np.uint8), 3) == bytes([0b00101001, 0b10000000])


def test_nonzero_padding_is_rejected():
    assert unpack_bits(bytes([0b00101001, 0b10000001]), 3, 3) is None


def test_wrong_length_is_rejected():
    with pytest.raises(ValueError):
        unpack_bits(b"\x00\x00\x00", 3, 3)
