"""Bringing series onto the reference grid: registration of CT phases, scanner coordinates for MR.

CT: each contrast phase is registered once (its anatomical image, hccnode.imaging.registration,
rigid then affine) to the reference series; images derived from the same acquisition (iodine
maps, VMIs) go through that phase's transform. MR sequences of one session are taken in scanner
coordinates (no registration: T2, DWI and ADC differ too much in contrast for the CT-tuned
quality figures), which the provenance says.

A flagged registration is returned with `ok = False` and its problems; the caller reports the
markers that need it as not measured, never uses it silently.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from hccnode import log
from hccnode.imaging import registration
from hccnode.imaging.boxed import BoxedArray
from hccnode.imaging.roi_stats import bounding_box
from hccnode.imaging.volumes import Volume

SCANNER_COORDINATES = {"method": "scanner coordinates (same frame of reference, no registration)"}


@dataclass
class Aligned:
    """`image`: the series on the reference grid (float32, NaN where it has no data), as a
    SimpleITK image or, when resampled within boxes, a BoxedArray (z, y, x); `quality`: the
    registration record for provenance (None for the reference itself)."""

    image: sitk.Image | BoxedArray | None
    quality: dict | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None and self.problem is None

    def array(self) -> np.ndarray | BoxedArray:
        """The values (z, y, x) to index with a ROI's box: a view of the image, or the BoxedArray."""
        return self.image if isinstance(self.image, BoxedArray) else sitk.GetArrayViewFromImage(self.image)


class Aligner:
    def __init__(self, reference: Volume, study_uid: str = ""):
        self.reference = reference
        self.study_uid = study_uid
        self._transforms: dict[str, tuple[sitk.Transform | None, dict | None, str | None]] = {}
        self._ahead: dict[str, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.boxes: list[tuple[slice, ...]] | None = None

    def register_ahead(self, anatomy: Volume) -> None:
        """Start registering `anatomy` to the reference in a background thread, so the caller
        can place ROIs meanwhile; `transform` takes the result (waiting for it if need be).
        SimpleITK releases the GIL while it registers, so this uses the second core; the result
        is the same as registering when asked (one registration thread, fixed seed)."""
        uid = anatomy.series_uid
        if uid == self.reference.series_uid or uid in self._transforms or uid in self._ahead:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="register")
        self._ahead[uid] = self._pool.submit(self._register, anatomy)

    def limit_to(self, boxes: list[tuple[slice, ...]] | None) -> None:
        """Resample other series only within `boxes` (numpy z, y, x slices of the reference grid,
        e.g. `Regions.boxes()`), leaving NaN (no data) elsewhere: the markers read values inside
        their ROIs only (the ECV map inside the liver ROIs), and a 512 x 512 x 200 resample costs
        seconds. None: the whole grid."""
        self.boxes = boxes

    def transform(self, anatomy: Volume) -> tuple[sitk.Transform | None, dict | None, str | None]:
        """(transform fixed->moving, quality record, problem) registering `anatomy` to the reference;
        transform None = identity (`anatomy` is the reference)."""
        uid = anatomy.series_uid
        if uid == self.reference.series_uid:
            return None, None, None
        if uid not in self._transforms:
            ahead = self._ahead.pop(uid, None)
            self._transforms[uid] = ahead.result() if ahead is not None else self._register(anatomy)
            if not self._ahead and self._pool is not None:
                self._pool.shutdown()
                self._pool = None
        return self._transforms[uid]

    def _register(self, anatomy: Volume) -> tuple[sitk.Transform, dict, str | None]:
        fixed_for, moving_for = self.reference.frame_of_reference_uid, anatomy.frame_of_reference_uid
        reg = registration.register(self.reference.image, anatomy.image)
        q = reg.quality
        record = {"fixed_series": self.reference.series_uid, "moving_series": anatomy.series_uid,
                  "ncc_before": round(q.ncc_before, 4), "ncc_after": round(q.ncc_after, 4),
                  "rotation_deg": round(q.rotation_deg, 3), "translation_mm": round(q.translation_mm, 3),
                  "stage": q.stage_used, "ok": q.ok, "problems": list(q.problems),
                  "same_frame_of_reference": bool(fixed_for and fixed_for == moving_for)}
        problem = None if q.ok else "registration flagged: " + "; ".join(q.problems)
        log.event("pipeline.registered", study=self.study_uid, moving=anatomy.series_uid, ok=q.ok,
                  ncc=round(q.ncc_after, 3))
        return reg.transform, record, problem

    def through(self, volume: Volume, anatomy: Volume | None = None, *, register: bool = True,
                nearest: bool = False) -> Aligned:
        """`volume` on the reference grid: through the registration of `anatomy` (default: the
        volume itself) when `register`, else in scanner coordinates (same frame of reference only)."""
        interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
        if not register or volume.series_uid == self.reference.series_uid:
            if (volume.frame_of_reference_uid and self.reference.frame_of_reference_uid
                    and volume.frame_of_reference_uid != self.reference.frame_of_reference_uid):
                return Aligned(None, None, f"series {volume.series_uid} is in another frame of reference than the "
                                           "reference series and is not registered")
            quality = None if volume.series_uid == self.reference.series_uid else dict(SCANNER_COORDINATES)
            return Aligned(self._resample(volume.image, None, interp), quality)
        tx, record, problem = self.transform(anatomy or volume)
        if problem:
            return Aligned(None, record, problem)
        if anatomy is not None and anatomy.series_uid != volume.series_uid and record is not None:
            record = {**record, "applied_to": volume.series_uid}
        return Aligned(self._resample(volume.image, tx, interp), record)

    def mask_from(self, mask: sitk.Image, anatomy: Volume) -> tuple[sitk.Image | None, dict | None, str | None]:
        """A mask drawn on `anatomy`'s grid carried to the reference grid (nearest neighbour)."""
        tx, record, problem = self.transform(anatomy)
        if problem:
            return None, record, problem
        return resample_mask(mask, self.reference.image, tx), record, None

    def _resample(self, image: sitk.Image, tx: sitk.Transform | None, interp) -> sitk.Image | BoxedArray:
        ref = self.reference.image
        if image.GetPixelID() != sitk.sitkFloat32:
            image = sitk.Cast(image, sitk.sitkFloat32)
        if tx is None and _same_grid(image, ref):
            return image  # volumes are float32 already: no copy
        if self.boxes is None:
            return sitk.Resample(image, ref, tx or sitk.Transform(), interp, float("nan"), sitk.sitkFloat32)
        pieces = []
        for box in self.boxes:
            grid = _sub_grid(ref, [b.start for b in box][::-1], [b.stop - b.start for b in box][::-1])
            piece = sitk.Resample(image, grid, tx or sitk.Transform(), interp, float("nan"), sitk.sitkFloat32)
            pieces.append((box, sitk.GetArrayFromImage(piece)))
        return BoxedArray(ref.GetSize()[::-1], pieces)  # no full-size grid of NaN


def resample_mask(mask: sitk.Image, reference: sitk.Image, tx: sitk.Transform | None) -> sitk.Image:
    """`mask` (uint8) on `reference`'s grid through `tx` (reference -> mask points; None =
    identity), nearest neighbour. Only the part of the reference grid the mask's bounding box
    maps to is resampled (a ROI is a few thousand voxels of a 512 x 512 x 200 grid): the result
    equals a full resample, at a fraction of the time."""
    out = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    out.CopyInformation(reference)
    box = bounding_box(sitk.GetArrayViewFromImage(mask), margin=1)
    if box is None:
        return out
    lo = [b.start for b in box][::-1]  # SimpleITK x, y, z
    size = [b.stop - b.start for b in box][::-1]
    part = sitk.RegionOfInterest(mask, size, lo)
    try:
        inverse = tx.GetInverse() if tx is not None else sitk.Transform()
    except RuntimeError:  # not invertible: resample the whole grid
        return sitk.Resample(mask, reference, tx, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    # Reference indices of the box's corners (voxel edges, so every voxel whose nearest mask
    # voxel lies in the box is inside), plus one voxel.
    corners = [[lo[a] + (size[a] - 0.5 if bit else -0.5) for a, bit in enumerate(bits)]
               for bits in np.ndindex(2, 2, 2)]
    idx = np.array([reference.TransformPhysicalPointToContinuousIndex(
        inverse.TransformPoint(mask.TransformContinuousIndexToPhysicalPoint(c))) for c in corners])
    first = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
    last = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1, np.array(reference.GetSize()) - 1)
    if np.any(last < first):
        return out  # the mask maps outside the reference
    grid = _sub_grid(reference, first, last - first + 1)
    piece = sitk.Resample(part, grid, tx or sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    (x, y, z), (nx, ny, nz) = (int(v) for v in first), piece.GetSize()
    out[x:x + nx, y:y + ny, z:z + nz] = piece  # in place
    return out


def _sub_grid(reference: sitk.Image, first, size) -> sitk.Image:
    """A small image whose voxels are those of `reference` from index `first` (x, y, z), `size`
    voxels per axis: the grid to resample only part of the reference onto."""
    grid = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    grid.SetSpacing(reference.GetSpacing())
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin(reference.TransformIndexToPhysicalPoint([int(v) for v in first]))
    return grid


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-4)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))
