import numpy as np
import pytest

from hccnode.imaging.roi_stats import bounding_box, mean_of_rois, roi_mean, union


def test_mean_of_rois():
    assert mean_of_rois([2.0, 2.2, 2.4]) == pytest.approx(2.2)
    with pytest.raises(ValueError):
        mean_of_rois([])
    with pytest.raises(ValueError):
        mean_of_rois([1.0, float("nan")])


def test_roi_mean_hand_worked_and_checks():
    img = np.array([[1.0, 2.0], [3.0, 10.0]])
    assert roi_mean(img, np.array([[True, True], [True, False]])) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="empty"):
        roi_mean(np.zeros((2, 2)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        roi_mean(np.zeros((2, 2)), np.zeros((3, 2), bool))
    img[0, 0] = np.nan
    with pytest.raises(ValueError, match="no data"):
        roi_mean(img, np.ones((2, 2), bool))


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int16, np.float32])
def test_bounding_box_matches_nonzero_extent(dtype):
    rng = np.random.default_rng(3)
    for _ in range(20):
        m = np.zeros((7, 9, 11), dtype=dtype)
        pts = rng.integers(0, [7, 9, 11], size=(int(rng.integers(1, 5)), 3))
        m[tuple(pts.T)] = 1
        box = bounding_box(m)
        assert box == tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(m))
        assert np.count_nonzero(m[box]) == np.count_nonzero(m)


def test_bounding_box_margin_is_clipped_and_empty_is_none():
    m = np.zeros((5, 6), np.uint8)
    m[0, 3] = m[2, 4] = 1
    assert bounding_box(m, margin=1) == (slice(0, 4), slice(2, 6))
    assert bounding_box(m, margin=[0, 2]) == (slice(0, 3), slice(1, 6))
    assert bounding_box(np.zeros((3, 3), bool)) is None


def test_union_is_any_of_the_masks_and_leaves_them_unchanged():
    rng = np.random.default_rng(3)
    masks = [rng.random((4, 5, 6)) > 0.7 for _ in range(3)]
    masks[1] = masks[1].astype(np.uint8)  # any mask type: nonzero is inside
    before = [m.copy() for m in masks]
    got = union(masks)
    assert got.dtype == bool and np.array_equal(got, np.any([m != 0 for m in masks], axis=0))
    assert all(np.array_equal(m, b) for m, b in zip(masks, before))
    assert union(masks[:1]) is not masks[0] and np.array_equal(union(masks[:1]), masks[0])
