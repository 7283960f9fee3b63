"""Regions.array: the markers' bool masks, without a full-size copy of each ROI."""

import gc

import numpy as np
import SimpleITK as sitk

from hccnode.imaging.measure import READER, RoiRef
from hccnode.imaging.rois import RoiMask
from hccnode.pipeline.regions import Regions


def _roi(values: np.ndarray, name: str) -> RoiMask:
    return RoiMask(sitk.GetImageFromArray(values.astype(np.uint8)), RoiRef(name=name, source=READER))


def test_a_zero_one_mask_is_a_view_of_its_image_that_outlives_the_caller_s_reference():
    values = np.zeros((4, 6, 5), np.uint8)
    values[1:3, 2:4, 1:4] = 1
    regions = Regions(rois=[_roi(values, "tumor")])
    mask = regions.array(regions.rois[0])
    assert mask.dtype == bool and np.array_equal(mask, values == 1)
    assert np.shares_memory(mask, sitk.GetArrayViewFromImage(regions.rois[0].mask))  # no copy
    assert not mask.flags.writeable
    assert regions.array(regions.rois[0]) is mask  # converted once
    regions.rois.clear()  # the ROI list may be filtered; the cached view keeps its image alive
    gc.collect()
    assert np.array_equal(mask, values == 1)


def test_a_mask_with_other_values_is_converted():
    values = np.zeros((3, 4, 4), np.uint8)
    values[1, 1:3, 1:3] = 2
    regions = Regions(rois=[_roi(values, "liver")])
    (roi, mask), = regions.arrays("liver")
    assert mask.dtype == bool and np.array_equal(mask, values > 0) and not mask.flags.writeable
