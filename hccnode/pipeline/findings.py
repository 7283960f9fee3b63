"""What the marker steps of one analysis collect, and the ROI sampling they share."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from hccnode.imaging.boxed import BoxedArray
from hccnode.imaging.measure import AUTOMATIC, ORGAN_MASK, Measurement, RoiRef
from hccnode.imaging.roi_stats import bounding_box, mean_of_rois, roi_mean
from hccnode.imaging.rois import RoiMask

# ROI values are read in the ROI's core: one voxel off its in-plane border, where partial volume
# and the interpolation of a registered phase mix in the neighbouring tissue (the papers place
# their ROIs away from margins and vessels: 001 and 003, Methods). A ROI too small to lose its
# border (fewer than MIN_CORE_VOXELS left) is used whole.
MIN_CORE_VOXELS = 10
_IN_PLANE = np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                      [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                      [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], dtype=bool)


@dataclass
class Findings:
    measurements: list[Measurement] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    series_used: set[str] = field(default_factory=set)
    ecv_map: BoxedArray | None = None  # ECV (%) on the reference grid, over the liver's box
    ecv_map_liver: np.ndarray | None = None  # the union of the liver ROIs the map covers
    lesions: list = field(default_factory=list)  # hccnode.pipeline.lesions.Lesion, largest first

    def add(self, m: Measurement) -> Measurement:
        self.measurements.append(m)
        for s in m.series:
            self.series_used.add(s.series_uid)
        return m

    def note(self, text: str) -> None:
        if text not in self.missing:
            self.missing.append(text)

    def value(self, marker: str) -> Measurement | None:
        """The first measurement of `marker` (measured or missing)."""
        return next((m for m in self.measurements if m.marker == marker), None)


_CORES: dict[int, tuple[weakref.ref, np.ndarray, tuple[slice, ...]]] = {}


def _core_and_box(mask: np.ndarray) -> tuple[np.ndarray, tuple[slice, ...]]:
    """(core of `mask` within its bounding box, that box), computed once per mask array."""
    hit = _CORES.get(id(mask))
    if hit is not None and hit[0]() is mask:
        return hit[1], hit[2]
    # erode inside the ROI's bounding box (plus one voxel): a 512 x 512 x 200 grid holds small ROIs
    box = bounding_box(mask, margin=1)
    if box is None:
        return np.zeros((0,) * np.ndim(mask), dtype=bool), tuple(slice(0, 0) for _ in np.shape(mask))
    m = np.asarray(mask[box]) != 0
    inner = ndimage.binary_erosion(m, structure=_IN_PLANE)
    out = inner if np.count_nonzero(inner) >= MIN_CORE_VOXELS else m
    key = id(mask)
    _CORES[key] = (weakref.ref(mask, lambda _ref, k=key, cache=_CORES: cache.pop(k, None)), out, box)
    return out, box


def mean_in(image: np.ndarray | BoxedArray, mask: np.ndarray) -> float:
    """Mean of `image` over the ROI core (ValueError if any core voxel has no data, or the ROI is empty)."""
    inner, box = _core_and_box(mask)
    return roi_mean(np.asarray(image[box]), inner)


def values_in(image: np.ndarray | BoxedArray, mask: np.ndarray) -> np.ndarray:
    """The image values in the ROI core."""
    inner, box = _core_and_box(mask)
    return np.asarray(image[box])[inner]


def mean_over(image: np.ndarray | BoxedArray, masks: list[np.ndarray]) -> float:
    """Average of the ROI means (papers 000-003 average their ROIs)."""
    return mean_of_rois(mean_in(image, m) for m in masks)


def group_ref(rois: list[RoiMask], role: str) -> RoiRef | None:
    """The RoiRef a value over all ROIs of a role is reported against: the ROI itself when there
    is one, else a role-level reference (the SR puts it in a group of its own)."""
    if not rois:
        return None
    if len(rois) == 1:
        return rois[0].ref
    sources = {r.ref.source for r in rois}
    uids = {r.ref.annotation_uid for r in rois}
    masks = {r.ref.placed_in for r in rois}
    source = sources.pop() if len(sources) == 1 else AUTOMATIC
    return RoiRef(role, source, uids.pop() if len(uids) == 1 else None, None,
                  masks.pop() if len(masks) == 1 and source == ORGAN_MASK else None)
