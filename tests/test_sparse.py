import numpy as np
from hypothesis import given, settings, strategies as st

from nnshrink.encode.sparse import (BAD_PAST_END, BAD_TRAILING, gaps_from_mask, gaps_from_mask_ref, mask_from_gaps,
                                    mask_from_gaps_ref)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 700), density=st.sampled_from([0.0, 0.01, 0.1, 0.5, 0.99, 1.0]),
       w=st.integers(3, 8), seed=st.integers(0, 2**32 - 1))
def test_gaps_round_trip_and_match_reference(n, density, w, seed):
    mask = np.random.default_rng(seed).random(n) < density
    gaps = gaps_from_mask(mask, w)
    np.testing.assert_array_equal(gaps, gaps_from_mask_ref(mask, w))
    back, count = mask_from_gaps(gaps, w, n)
    np.testing.assert_array_equal(back, mask)
    assert count == mask.sum()
    np.testing.assert_array_equal(mask_from_gaps_ref(gaps, w, n), mask)
    # the encoding bounds the tensor: numel <= (count + 1) * M
    assert n <= (len(gaps) + 1) * ((1 << w) - 1)


def test_fillers_for_long_gaps():
    mask = np.zeros(20, bool)
    mask[[0, 19]] = True
    # w=3: M=7; gap 18 = 7 + 7 + 4
    np.testing.assert_array_equal(gaps_from_mask(mask, 3), [0, 7, 7, 4])


def test_trailing_fillers_cover_the_end():
    mask = np.zeros(16, bool)
    mask[0] = True
    np.testing.assert_array_equal(gaps_from_mask(mask, 3), [0, 7, 7])  # 15 trailing zeros -> 2 fillers, 1 left


def test_bad_streams_are_refused():
    assert mask_from_gaps(np.array([5], np.uint8), 3, 4)[1] == BAD_PAST_END
    assert mask_from_gaps(np.array([7, 7], np.uint8), 3, 10)[1] == BAD_PAST_END
    assert mask_from_gaps(np.array([0], np.uint8), 3, 20)[1] == BAD_TRAILING


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 500), density=st.sampled_from([0.0, 0.1, 0.5, 1.0]), seed=st.integers(0, 2**32 - 1))
def test_scatter_dense_matches_boolean_assignment(n, density, seed):
    from nnshrink.encode.sparse import scatter_dense
    rng = np.random.default_rng(seed)
    mask = (rng.random(n) < density).reshape(-1, 1)
    vals = rng.standard_normal(int(mask.sum())).astype(np.float32)
    ref = np.zeros(mask.shape, np.float32)
    ref[mask] = vals
    np.testing.assert_array_equal(scatter_dense(mask, vals), ref)
