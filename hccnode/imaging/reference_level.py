"""The reference ROI at the level of what it normalises.

Paper 001 (Materials and methods, Extracellular volume fraction analysis): "Within the abdominal
aorta at the same level, the ROIs were placed in the same location in each patient in both
unenhanced and equilibrium CECT ... (approximately 100 mm²)", and "ΔHU_{tumor-aorta} and
ΔHU_{liver-aorta} represent HU in the equilibrium CECT minus unenhanced for tumor, liver and aorta
(tumor or liver parenchyma plane)": the tumour's ECV takes the aorta on the tumour's plane, the
liver's on the liver ROIs' plane. Paper 000 (2.2 (2)): "the iodine concentration of the lesion and
adjacent main artery at the same level". Paper 002 (DECT and perfusion quantitative analysis): "An
additional ROI was positioned on the abdominal aorta on the same slice, avoiding vessel wall
calcifications and covering at least 50% of the arterial cross-section". Paper 003 (Image
analysis): "a single ROI was selected in the erector spinae muscle region at the same slice".

`on_slices` keeps the part of existing reference ROIs (a reader's, or the node's) on the level's
slices; `lumen_roi` places an aortic ROI on those slices when none reaches them, in the lumen
hccnode.imaging.anatomy.aortic_lumen finds there; `lumen_coverage` is the fraction of the lumen's
cross-section a ROI covers (paper 002's >= 50 %).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from hccnode.imaging.anatomy import aortic_lumen, disk_mask, image_lps_order

AORTA_ROI_AREA_MM2 = 100.0  # paper 001: "(approximately 100 mm²)"
WALL_MARGIN_MM = 2.0  # a placed ROI keeps this far from the lumen's wall (partial volume, wall calcium)
MIN_COVERAGE = 0.5  # paper 002: "covering at least 50% of the arterial cross-section"


def on_slices(masks: Sequence[np.ndarray], slices: Sequence[int]) -> list[np.ndarray]:
    """The parts of `masks` (z, y, x) on `slices`; masks with no voxel there are left out."""
    if not masks:
        return []
    keep = np.zeros(len(masks[0]), bool)
    keep[list(slices)] = True
    out = []
    for m in masks:
        part = np.asarray(m, bool) & keep[:, None, None]
        if part.any():
            out.append(part)
    return out


def _lumens(enhanced: np.ndarray, image: sitk.Image, slices: Sequence[int]):
    """(lumen per slice index of `enhanced`, LpsOrder) on `slices`, or (None, reason)."""
    order = image_lps_order(image)
    if order.axes[0] != 0:
        return None, "the series is not axial: the aorta is looked for on axial slices only"
    ks = sorted(slices)
    slab = order.apply(np.asarray(enhanced, dtype=np.float32)[ks])
    spacing = order.spacing(image.GetSpacing()[::-1])
    found = aortic_lumen(np.ascontiguousarray(slab), spacing)
    return ({ks[i]: lu for i, lu in found.items()}, order), None


def lumen_roi(enhanced: np.ndarray, image: sitk.Image, slices: Sequence[int], area_mm2: float | None = AORTA_ROI_AREA_MM2
              ) -> tuple[np.ndarray | None, str]:
    """An aortic ROI on `slices` of `enhanced` (an enhanced phase, z y x on `image`'s grid): on
    each slice where the lumen is found, a disk of `area_mm2` at its deepest point, kept
    WALL_MARGIN_MM inside the wall (or, `area_mm2` None, the lumen less that margin when that
    leaves at least MIN_COVERAGE of it, else the whole lumen). Returns
    (mask, what was done) or (None, why not)."""
    found, why = _lumens(enhanced, image, slices)
    if found is None:
        return None, why
    lumen, order = found
    if not lumen:
        return None, "no enhanced aortic lumen found on those slices"
    _, dy, dx = order.spacing(image.GetSpacing()[::-1])
    lps = np.zeros(order.apply(np.zeros(np.shape(enhanced), bool)).shape, bool)
    for k, lu in lumen.items():
        if area_mm2 is None:
            # a pixel's edge, half a pixel nearer the wall than its centre, keeps the margin; on
            # pixels too coarse for that to leave half the lumen, the whole lumen (paper 002's >= 50 %)
            depth = ndimage.distance_transform_edt(lu.mask, sampling=(dy, dx)) - max(dy, dx) / 2.0
            core = lu.mask & (depth >= WALL_MARGIN_MM)
            lps[k] = core if core.sum() >= MIN_COVERAGE * lu.mask.sum() else lu.mask
        else:
            radius = min(float(np.sqrt(area_mm2 / np.pi)), lu.depth_mm - WALL_MARGIN_MM)
            if radius > 0:
                lps[k] = disk_mask(lps.shape[1:], int(round(lu.cy)), int(round(lu.cx)), radius, dy, dx) & lu.mask
    if not lps.any():
        return None, f"the aortic lumen on those slices is too narrow for a ROI {WALL_MARGIN_MM:g} mm from its wall"
    return np.ascontiguousarray(order.invert(lps)), f"placed by the node in the aortic lumen on {len(lumen)} slice(s)"


def lumen_coverage(roi: np.ndarray, enhanced: np.ndarray, image: sitk.Image) -> float | None:
    """The smallest fraction, over the slices `roi` lies on, of the aortic lumen's cross-section
    the ROI covers; None when the lumen is not found on them."""
    slices = [int(k) for k in np.flatnonzero(np.asarray(roi).any(axis=(1, 2)))]
    found, _ = _lumens(enhanced, image, slices)
    if not found or not found[0]:
        return None
    lumen, order = found
    roi_lps = order.apply(np.asarray(roi, bool))
    return min(float(np.count_nonzero(roi_lps[k] & lu.mask)) / float(np.count_nonzero(lu.mask))
               for k, lu in lumen.items() if lu.mask.any())
