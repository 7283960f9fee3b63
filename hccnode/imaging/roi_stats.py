"""ROI statistics shared by the markers: the mean of an image over a mask, the average of
several ROI means (papers 000, 001, 002 and 003 all average three ROIs; unit = the image's), the
union of several ROIs, and the bounding box that lets them work on a ROI's few voxels instead of
a 512 x 512 x 200 grid."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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


def union(masks: Sequence[np.ndarray]) -> np.ndarray:
    """The voxels in any of `masks` (same shape) as one new bool array: np.any(masks, axis=0)
    would first stack them all (3 ROIs of 200 x 512 x 512 is 150 MB more)."""
    out = np.array(masks[0], dtype=bool)
    for m in masks[1:]:
        out |= np.asarray(m, dtype=bool)
    return out


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding `mask`'s non-zero voxels, widened by `margin` voxels
    (one per axis, or one for all) and clipped to the array; None for an empty mask.

    The whole array is scanned once, along its first axis; the other axes only within the
    slices that hold the mask (np.nonzero on a full volume costs ~50x more)."""
    m = np.asarray(mask)
    m = m.view(np.uint8) if m.dtype == bool else (m if m.dtype.kind in "iu" else m != 0)
    if m.ndim == 0 or m.size == 0:
        return None
    pad = [int(margin)] * m.ndim if np.ndim(margin) == 0 else [int(v) for v in margin]
    hit = np.flatnonzero(m.reshape(m.shape[0], -1).max(axis=1))
    if not hit.size:
        return None
    ranges = [(int(hit[0]), int(hit[-1]))]
    inner = m[ranges[0][0]:ranges[0][1] + 1]
    for axis in range(1, m.ndim):
        h = np.flatnonzero(inner.max(axis=tuple(a for a in range(m.ndim) if a != axis)))
        ranges.append((int(h[0]), int(h[-1])))
    return tuple(slice(max(lo - p, 0), min(hi + p + 1, n)) for (lo, hi), p, n in zip(ranges, pad, m.shape))
