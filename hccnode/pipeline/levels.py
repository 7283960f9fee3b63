"""Reference ROIs at the level of what they normalise (hccnode.imaging.reference_level): the aorta
on each lesion's slices and on the liver ROIs' slices (papers 000, 001, 002), the erector spinae
on the tumour's slices (paper 003).

`place_aortas` runs in the ROI step (before the other phases are resampled around the ROIs): for
each level no aorta ROI reaches, it places one in the lumen of the reference series on that
level. `at_level` is what the markers read: the parts of the role's ROIs on a level's slices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from hccnode.imaging import reference_level
from hccnode.imaging.lesions import slices_of
from hccnode.imaging.measure import AUTOMATIC, RoiRef
from hccnode.imaging.rois import RoiMask
from hccnode.imaging.volumes import Volume


def levels(regions) -> list[tuple[str, list[int]]]:
    """(name, slices) of each level a CT reference is read at: each lesion's, then the liver ROIs'."""
    out = [(les.describe(), les.slices) for les in regions.lesions]
    livers = [m for _, m in regions.arrays("liver")]
    if livers:
        out.append(("the liver ROIs", sorted(set().union(*(slices_of(m) for m in livers)))))
    return out


def place_aortas(regions, reference: Volume, lumen_wide: bool) -> list[str]:
    """An automatic aorta ROI on each level of `levels` that no aorta ROI reaches, in the aortic
    lumen of `reference` there: paper 001's ~100 mm² disk, or (`lumen_wide`, dual energy: paper
    002's ROI "covering at least 50% of the arterial cross-section") the lumen less its wall
    margin. Returns notes on levels left without one."""
    notes = []
    values = sitk.GetArrayViewFromImage(reference.image)
    for name, slices in levels(regions):
        if reference_level.on_slices([m for _, m in regions.arrays("aorta")], slices):
            continue
        mask, what = reference_level.lumen_roi(values, reference.image, slices,
                                               None if lumen_wide else reference_level.AORTA_ROI_AREA_MM2)
        if mask is None:
            notes.append(f"aorta at the level of {name}: not placed ({what})")
            continue
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(reference.image)
        regions.rois.append(RoiMask(image, RoiRef("aorta", AUTOMATIC, None, f"aorta at the level of {name}")))
    return notes


def at_level(rois: Sequence[tuple[RoiMask, np.ndarray]], slices: Sequence[int]) -> tuple[list[np.ndarray], str]:
    """The parts of `rois` (ROI, mask) on `slices`, and which ROIs they are ("" when none)."""
    parts, names = [], []
    for roi, mask in rois:
        part = reference_level.on_slices([mask], slices)
        if part:
            parts += part
            names.append(f"{roi.ref.label or roi.role} ({roi.ref.source})")
    return parts, ", ".join(names)
