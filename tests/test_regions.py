"""Regions.array: the markers' bool masks, without a full-size copy of each ROI."""

import gc

import numpy as np
import SimpleITK as sitk

from hccnode.imaging.measure import READER, RoiRef
from hccnode.imaging.rois import RoiMask
from hccnode.pipeline.regions import Regions


def _roi(values: np.ndarray, name: str) -> RoiMask:
    return RoiMask(sitk.GetImageFromArray(values.astype(np.uint8)), RoiRef(name=name, source=READER))


def test_a_zero_one_mask_is_a_view_of_its_image_that_stays_valid_when_the_regions_are_gone():
    values = np.zeros((4, 6, 5), np.uint8)
    values[1:3, 2:4, 1:4] = 1
    regions = Regions(rois=[_roi(values, "tumor")])
    mask = regions.array(regions.rois[0])
    assert mask.dtype == bool and np.array_equal(mask, values == 1)
    assert np.shares_memory(mask, sitk.GetArrayViewFromImage(regions.rois[0].mask))  # no copy
    assert not mask.flags.writeable
    assert regions.array(regions.rois[0]) is mask  # converted once
    part = mask[1:3]
    del regions, mask  # the view holds its image: still valid without the Regions or its ROIs
    gc.collect()
    other = [np.ones(values.shape, np.uint8) * 7 for _ in range(4)]  # reuse of freed memory would show
    assert np.array_equal(part, values[1:3] == 1) and other[0].max() == 7


def test_a_mask_with_other_values_is_converted():
    values = np.zeros((3, 4, 4), np.uint8)
    values[1, 1:3, 1:3] = 2
    regions = Regions(rois=[_roi(values, "liver")])
    (roi, mask), = regions.arrays("liver")
    assert mask.dtype == bool and np.array_equal(mask, values > 0) and not mask.flags.writeable
