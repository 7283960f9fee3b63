import numpy as np
import pytest

from hccnode.imaging.roi_stats import mean_of_rois, roi_mean


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
