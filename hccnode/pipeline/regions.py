"""The ROIs of one analysis, on the reference grid: a reader's annotation wins, automatic ROIs
fill the roles the reader did not draw, and a tumor is never placed automatically.

Annotations (SEG, RTSTRUCT, TID 1500 SR) in the study are read with hccnode.imaging.rois; one
drawn on another series than the reference is carried over through that series' registration.
A SEG segment that is a site's whole-organ mask (hccnode.imaging.organ_masks: AUTOMATIC and
organ-sized) is not a reader's ROI: it is kept in `Regions.organs`, carried over the same way,
and the CT ROIs a reader did not draw are placed inside it before the node looks for the organ
itself. Automatic placement (hccnode.imaging.auto_rois, optional) is reached only through `placer`.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from hccnode import log
from hccnode.imaging import organ_masks
from hccnode.imaging.measure import ORGAN_MASK, RoiRef
from hccnode.imaging.roi_stats import bounding_box
from hccnode.imaging.rois import AnnotationError, RoiMask, read_annotation, referenced_series
from hccnode.imaging.volumes import Volume
from hccnode.pipeline.align import Aligner
from hccnode.pipeline.study import Study

AUTO_MODULE = "hccnode.imaging.auto_rois"
TUMOR_NOT_PLACED = "no reader's tumor ROI in the study (a tumor is never placed automatically)"


@dataclass
class OrganMask:
    """A site's whole-organ mask on the reference grid: role, mask, the SEG it came from and its
    segment label."""

    role: str
    mask: sitk.Image
    seg: Dataset
    label: str

    @property
    def seg_uid(self) -> str:
        return str(self.seg.get("SOPInstanceUID", ""))


@dataclass
class Regions:
    rois: list[RoiMask] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)       # what is missing or was ignored, and why
    annotations: list[Dataset] = field(default_factory=list)  # reader and organ SEG objects used (SR evidence)
    registration: dict[str, dict] = field(default_factory=dict)  # annotation UID -> carry-over record
    organs: list[OrganMask] = field(default_factory=list)  # site's whole-organ masks (not ROIs)
    lesions: list = field(default_factory=list)  # hccnode.pipeline.lesions.Lesion, largest first

    def by_role(self, role: str) -> list[RoiMask]:
        return [r for r in self.rois if r.role == role]

    def boxes(self, margin: int = 1) -> list[tuple[slice, ...]]:
        """Each ROI's bounding box (numpy z, y, x) widened by `margin` voxels."""
        return [b for r in self.rois for b in [bounding_box(sitk.GetArrayViewFromImage(r.mask), margin)] if b]

    _arrays: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def array(self, roi: RoiMask) -> np.ndarray:
        """The bool mask (z, y, x) of one ROI, read-only, converted once: a view of its image when
        that holds only 0 and 1, as masks do (no full-size copy per ROI). The view holds the image
        (through its base), so it stays valid however long it is kept."""
        if id(roi.mask) not in self._arrays:
            values = sitk.GetArrayViewFromImage(roi.mask)
            if values.dtype == np.uint8 and values.max(initial=0) <= 1:
                mask = np.asarray(_Pinned(roi.mask, values.view(bool)))
            else:
                mask = values > 0
                mask.flags.writeable = False
            self._arrays[id(roi.mask)] = mask
        return self._arrays[id(roi.mask)]

    def arrays(self, role: str) -> list[tuple[RoiMask, np.ndarray]]:
        """(ROI, bool mask z, y, x) of a role; each mask converted once."""
        return [(r, self.array(r)) for r in self.by_role(role)]


class _Pinned:
    """An array view of a SimpleITK image that keeps the image alive: numpy makes this object
    the base of the array it builds from `__array_interface__` (a bare view of an image's buffer
    does not hold the image, and reads freed memory once the image is gone)."""

    def __init__(self, image: sitk.Image, view: np.ndarray):
        self.image = image
        self.__array_interface__ = view.__array_interface__


def placer(name: str) -> Callable | None:
    """A function of the automatic ROI module, or None when this installation has none."""
    try:
        module = importlib.import_module(AUTO_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == AUTO_MODULE:
            return None
        raise
    return getattr(module, name, None)


def reader_rois(study: Study, reference: Volume, aligner: Aligner) -> Regions:
    """Every usable region of the reader's annotations in the study, on the reference grid."""
    out = Regions()
    for series in study.annotation_series():
        for path in series.paths:
            try:
                ds = pydicom.dcmread(path)
            except Exception as exc:  # noqa: BLE001 - one unreadable object must not stop the study
                out.notes.append(f"annotation in {series.describe()} unreadable: {type(exc).__name__}")
                continue
            _read_one(study, ds, reference, aligner, out)
    return out


def _read_one(study: Study, ds: Dataset, reference: Volume, aligner: Aligner, out: Regions) -> None:
    sop = str(ds.get("SOPInstanceUID", ""))
    drawn_on = referenced_series(ds)
    base, carry = reference, None
    if drawn_on and reference.series_uid not in drawn_on:
        source = next((s for s in study.series if s.uid in drawn_on and s.modality in ("CT", "MR")), None)
        if source is None:
            out.notes.append(f"annotation {sop}: drawn on a series that is not in this study")
            return
        base = study.volume(source)
        if base is None:
            out.notes.append(f"annotation {sop}: its series ({source.describe()}) cannot be read")
            return
        carry = base
    try:
        found = read_annotation(ds, base)
    except AnnotationError as exc:
        out.notes.append(f"annotation {sop} not used: {exc.problem}")
        return
    organs = {id(r) for r in _organ_rois(ds, found.rois, base)}
    if not organs:  # a tool's SEG lists all it segmented: one note below, not one per unused segment
        out.notes.extend(f"annotation {sop}: {why}" for why in found.ignored)
    used = 0
    for roi in found.rois:
        organ = id(roi) in organs
        if organs and not organ and _automatic(ds, roi):
            continue  # the tool's other segments (e.g. a tumor it found) are no reader's ROIs
        mask = roi.mask
        if carry is not None:
            mask, record, problem = aligner.mask_from(roi.mask, carry)
            if record:
                out.registration[sop] = record
            if problem:
                out.notes.append(f"{roi.ref.name} ROI {roi.ref.label!r} of annotation {sop} not carried to the "
                                 f"reference series: {problem}")
                continue
            if not sitk.GetArrayViewFromImage(mask).any():
                out.notes.append(f"{roi.ref.name} ROI {roi.ref.label!r} of annotation {sop} lies outside the "
                                 "reference series")
                continue
        if organ:
            out.organs.append(OrganMask(roi.role, mask, ds, roi.ref.label or ""))
        else:
            out.rois.append(RoiMask(mask, roi.ref))
        used += 1
    if organs and len(ds.get("SegmentSequence") or []) > used:
        out.notes.append(f"organ SEG {sop}: {len(ds.SegmentSequence) - used} segment(s) not used (organs no "
                         "marker of papers 000-003 needs; a tumor is never taken from a tool)")
    if used:
        out.annotations.append(ds)


def _organ_rois(ds: Dataset, rois: list[RoiMask], base: Volume) -> list[RoiMask]:
    """The ROIs of `ds` that are a site's whole-organ masks (organ_masks.is_organ_mask, volume
    on the grid they were drawn on)."""
    voxel_ml = float(np.prod(base.image.GetSpacing())) / 1000.0
    return [roi for roi in rois if _automatic(ds, roi) and organ_masks.is_organ_mask(
        roi.role, "AUTOMATIC", float(np.count_nonzero(sitk.GetArrayViewFromImage(roi.mask))) * voxel_ml)]


def _automatic(ds: Dataset, roi: RoiMask) -> bool:
    item = organ_masks.segment_item(ds, roi.ref.label)
    return item is not None and str(item.get("SegmentAlgorithmType", "")).upper() == "AUTOMATIC"


def complete_ct(regions: Regions, reference: Volume, roles=("aorta", "liver"),
                unenhanced: Callable[[], sitk.Image | None] | None = None,
                vessels: Callable[[], sitk.Image | None] | None = None) -> None:
    """Automatic ROIs for the CT roles the reader did not draw (paper 001's aorta and three
    liver ROIs), avoiding the reader's tumors: inside a site's organ mask when the study has one,
    else where the node finds the organ. The CT markers need no muscle ROI.

    `unenhanced` gives, when called, the unenhanced phase on the reference grid (or None): when
    the reference phase alone shows no liver, the node's own placement is tried again with the
    enhancement as a second feature (asked for only then: it waits for that phase's registration).
    `vessels` gives, when called, the portal venous phase on the reference grid (or None), in
    which the intrahepatic veins stand out most: the liver ROIs keep clear of them there too
    (asked for only when the node places liver ROIs)."""
    wanted = [r for r in roles if not regions.by_role(r)]
    if not wanted:
        return
    avoid = _tumors(regions)
    in_organs = [r for r in wanted if any(o.role == r for o in regions.organs)]
    if in_organs:
        _take_in_organs(regions, in_organs, reference, avoid)
        wanted = [r for r in wanted if not regions.by_role(r)]
        if not wanted:
            return
    place = placer("place_ct_rois")
    if place is None:
        regions.notes.extend(f"{r} not measured: no reader's {r} ROI, and automatic ROI placement is not "
                             "available in this installation" for r in wanted)
        return
    veins = vessels() if vessels is not None and "liver" in wanted else None
    placement = _run(regions, place, wanted, reference, avoid=avoid, vessels=veins)
    if placement is not None and "liver" in wanted and not placement.by_role("liver") and unenhanced is not None:
        image = unenhanced()
        second = None if image is None else _run(regions, place, wanted, reference, avoid=avoid, unenhanced=image,
                                                 vessels=veins)
        if second is not None and second.by_role("liver"):
            second.notes.insert(0, "liver found with its enhancement against the unenhanced phase (the "
                                   "enhanced phase alone did not separate it from touching organs)")
            placement = second
    if placement is not None:
        _add(regions, placement, wanted)
        if veins is not None and regions.by_role("liver"):
            regions.notes.append("liver ROIs placed clear of the veins seen in the portal venous phase (registered)")


def _tumors(regions: Regions) -> sitk.Image | None:
    tumors = regions.by_role("tumor")
    avoid = None
    if tumors:
        avoid = tumors[0].mask
        for t in tumors[1:]:
            avoid = sitk.Or(avoid, t.mask)
    return avoid


def _take_in_organs(regions: Regions, roles: list[str], reference: Volume, avoid: sitk.Image | None) -> None:
    """The ROIs of `roles` placed inside the site's organ masks (of each role, the masks of the
    first SEG that has one, joined: e.g. a tool's left and right erector spinae), each ROI
    naming the mask and the tool (RoiRef source ORGAN_MASK, `placed_in`)."""
    place = placer("place_ct_rois_in_organs")
    if place is None:
        regions.notes.append("organ masks not used: automatic ROI placement is not available in this installation")
        return
    chosen: dict[str, list[OrganMask]] = {}
    for role in roles:
        masks = [o for o in regions.organs if o.role == role]
        chosen[role] = [o for o in masks if o.seg is masks[0].seg]
        others = {o.seg_uid for o in masks} - {masks[0].seg_uid}
        if others:
            regions.notes.append(f"{role} organ mask of SEG {', '.join(sorted(others))} not used: "
                                 f"SEG {masks[0].seg_uid} has one too")
    organs = {}
    for role, masks in chosen.items():
        organs[role] = masks[0].mask
        for o in masks[1:]:
            organs[role] = sitk.Or(organs[role], o.mask)
    try:
        placement = place(reference, organs, avoid=avoid)
    except Exception as exc:  # noqa: BLE001 - the node's own finder still has its turn
        log.event("pipeline.organ_rois_failed", level=logging.WARNING, series=reference.series_uid, error=type(exc).__name__)
        regions.notes.append(f"organ masks not used: placing ROIs in them failed ({exc})")
        return
    regions.notes.extend(f"in the site's organ masks: {n}" for n in placement.notes)
    for roi in placement.rois:
        if roi.role in organs:
            masks = chosen[roi.role]
            ref = RoiRef(roi.role, ORGAN_MASK, masks[0].seg_uid, roi.ref.label,
                         organ_masks.describe(masks[0].seg, [o.label for o in masks]))
            regions.rois.append(RoiMask(roi.mask, ref))


def complete_mr(regions: Regions, t2: Volume) -> None:
    """An automatic erector spinae ROI on the T2 series when the reader drew none (paper 003)."""
    if regions.by_role("muscle"):
        return
    if any(o.role == "muscle" for o in regions.organs):
        regions.notes.append("erector spinae organ mask not used: ROIs are placed in organ masks on CT only; "
                             "the muscle is found on the T2 series instead")
    place = placer("place_mr_muscle")
    if place is None:
        regions.notes.append("muscle not measured: no reader's erector spinae ROI, and automatic ROI placement is "
                             "not available in this installation")
        return
    _take(regions, place, ["muscle"], t2)


def _take(regions: Regions, place: Callable, wanted: list[str], volume: Volume, **kw) -> None:
    placement = _run(regions, place, wanted, volume, **kw)
    if placement is not None:
        _add(regions, placement, wanted)


def _run(regions: Regions, place: Callable, wanted: list[str], volume: Volume, **kw):
    """The placement, or None (with a note per role) when it failed."""
    try:
        return place(volume, **kw)
    except Exception as exc:  # noqa: BLE001 - automatic placement failing leaves the roles unmeasured
        log.event("pipeline.auto_rois_failed", level=logging.WARNING, series=volume.series_uid, error=type(exc).__name__)
        regions.notes.extend(f"{r} not measured: automatic ROI placement failed ({exc})" for r in wanted)
        return None


def _add(regions: Regions, placement, wanted: list[str]) -> None:
    regions.notes.extend(placement.notes)
    for roi in placement.rois:
        if roi.role in wanted and roi.role != "tumor":
            regions.rois.append(roi)
    for r in wanted:
        if not regions.by_role(r):
            regions.notes.append(f"{r} not measured: automatic placement found no {r} ROI")
