"""BoxedArray: a grid known within boxes reads as the NaN-filled array it stands for."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hccnode.imaging.boxed import BoxedArray

SHAPE = (6, 9, 11)


def _filled(shape, pieces):
    whole = np.full(shape, np.nan, np.float32)
    for box, values in pieces:
        whole[box] = values
    return whole


def _span(n):
    return st.tuples(st.integers(0, n - 1), st.integers(1, n)).map(lambda ab: slice(min(ab), max(ab[0] + 1, ab[1])))


BOX = st.tuples(*(_span(n) for n in SHAPE))


@settings(max_examples=80, deadline=None)
@given(st.lists(BOX, max_size=4), BOX, st.integers(0, 2**31))
def test_any_box_reads_as_the_filled_array_does(boxes, key, seed):
    """Overlapping pieces included: the later one wins, as when pasted into an array in turn."""
    rng = np.random.default_rng(seed)
    pieces = [(b, rng.normal(size=tuple(s.stop - s.start for s in b)).astype(np.float32)) for b in boxes]
    boxed = BoxedArray(SHAPE, pieces)
    whole = _filled(SHAPE, pieces)
    np.testing.assert_array_equal(boxed[key], whole[key])
    np.testing.assert_array_equal(np.asarray(boxed), whole)
    np.testing.assert_array_equal(boxed[key[0]], whole[key[0]])  # a slice of the first axis alone


def test_shape_open_and_negative_slices_and_what_it_refuses():
    values = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    boxed = BoxedArray(SHAPE, [((slice(1, 3), slice(2, 5), slice(7, 11)), values)])
    assert boxed.shape == SHAPE and boxed.ndim == 3 and np.shape(boxed) == SHAPE
    np.testing.assert_array_equal(boxed[1:3, 2:5, -4:], values)
    np.testing.assert_array_equal(boxed[1:3, 2:5, 7:], values)
    assert np.isnan(boxed[:, :2]).all() and boxed[:, :2].shape == (6, 2, 11)
    with pytest.raises(IndexError):
        boxed[1]  # an integer: not a box
    with pytest.raises(IndexError):
        boxed[::2]
    with pytest.raises(ValueError, match="do not fill the box"):
        BoxedArray(SHAPE, [((slice(0, 2), slice(0, 2), slice(0, 2)), np.zeros((2, 2, 3)))])
