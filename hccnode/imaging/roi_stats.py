"""ROI statistics shared by the markers: the mean of an image over a mask, and the average of
several ROI means (papers 000, 001, 002 and 003 all average three ROIs). Unit = the image's."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def roi_mean(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean of `image` over the voxels where `mask` is true (NaN voxels, i.e. no data, refused)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.shape(image):
        raise ValueError(f"mask shape {mask.shape} differs from image shape {np.shape(image)}")
    if not mask.any():
        raise ValueError("empty ROI mask")
    values = np.asarray(image, dtype=float)[mask]
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{int(np.sum(~np.isfinite(values)))} ROI voxel(s) have no data (outside the registered image?)")
    return float(values.mean())


def mean_of_rois(roi_means: Iterable[float]) -> float:
    """Average of per-ROI mean values."""
    values = np.asarray(list(roi_means), dtype=float)
    if values.size == 0:
        raise ValueError("no ROI values to average")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"non-finite ROI value in {values.tolist()}")
    return float(values.mean())
