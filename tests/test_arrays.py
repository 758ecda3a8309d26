"""shardemb.core.arrays: the numpy helpers the router, the shards and the layer share."""

import numpy as np
import pytest

from shardemb.core.arrays import unique_inverse


def _same_as_numpy(ids):
    uniq, inverse = unique_inverse(ids)
    want_uniq, want_inverse = np.unique(ids, return_inverse=True)
    assert uniq.dtype == want_uniq.dtype and inverse.dtype == np.int64
    np.testing.assert_array_equal(uniq, want_uniq)
    np.testing.assert_array_equal(inverse.reshape(-1), want_inverse.reshape(-1))
    np.testing.assert_array_equal(uniq[inverse.reshape(-1)], ids.reshape(-1))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4095, 4096, 4097, 65536])
@pytest.mark.parametrize("vocab", [1, 5, 100_000, 1 << 40])
def test_unique_inverse_equals_np_unique(n, vocab, rng):
    _same_as_numpy(rng.integers(0, vocab, n, dtype=np.int64))


def test_unique_inverse_at_the_packing_limit(rng):
    # 4096 positions take 12 bits: ids below 2**51 are packed, larger ones are not.
    for top in (2**51 - 1, 2**51, 2**63 - 1):
        ids = rng.integers(top - 10, top, 4096, dtype=np.int64, endpoint=True)
        ids[:3] = [0, top, top]
        _same_as_numpy(ids)


@pytest.mark.parametrize(
    "ids",
    [
        np.array([-3, 5, -3, 0, 2**62], np.int64),  # hashed keys: negative, large
        np.array([7, 3, 7, 5], np.int32),
        np.array([9, 1, 9, 2**64 - 1], np.uint64),
        np.array([[4, 1], [4, 2]], np.int64),
    ],
    ids=["negative", "int32", "uint64", "2-D"],
)
def test_unique_inverse_falls_back_to_np_unique(ids):
    _same_as_numpy(ids)


def test_unique_inverse_leaves_its_input_alone(rng):
    ids = rng.integers(0, 50, 1000, dtype=np.int64)
    before = ids.copy()
    unique_inverse(ids)
    np.testing.assert_array_equal(ids, before)
