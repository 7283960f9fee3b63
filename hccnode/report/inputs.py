"""What the output builders take: the reference grid, the ROIs on it, and the analysis key.

Masks are numpy bool arrays (z, y, x) on the reference series' grid; `Reference.datasets` are that
series' instances in the same z order (or one enhanced multi-frame instance with one frame per z).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

import hccnode
from hccnode.imaging.measure import READER, LabRef, RoiRef
from hccnode.imaging.roi_stats import bounding_box
from hccnode.report.uids import mask_digest, uid_from


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) that every
# output copies from the images (highdicom reads them as attributes): a sender may leave them out,
# while our objects must carry them, empty when unknown.
COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                "ReferringPhysicianName", "StudyID", "AccessionNumber")


def with_type2(ds: Dataset) -> Dataset:
    """`ds` (a received header, in memory) with each absent COPIED_TYPE2 attribute added empty;
    present values are kept as they are. Returns `ds`."""
    for keyword in COPIED_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


@dataclass(frozen=True)
class ReportRoi:
    """One measured region: its provenance (RoiRef) and its mask on the reference grid, read-only
    so what is derived from it once stays true: a copy, unless given a read-only bool array."""

    ref: RoiRef
    mask: np.ndarray

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 3:
            raise ValueError(f"ROI {self.describe()}: mask must be 3-D (z, y, x), got shape {mask.shape}")
        if mask.dtype != bool or mask.flags.writeable:
            mask = mask.astype(bool)
        if not mask.any():
            raise ValueError(f"ROI {self.describe()}: mask is empty")
        mask.flags.writeable = False
        object.__setattr__(self, "mask", mask)

    @classmethod
    def from_roi_mask(cls, roi) -> "ReportRoi":
        """From hccnode.imaging.rois.RoiMask (SimpleITK mask on the reference grid)."""
        view = sitk.GetArrayViewFromImage(roi.mask)
        # Unsigned voxels: nonzero is inside, and the bool copy __post_init__ makes is the only copy.
        return cls(roi.ref, view if view.dtype.kind == "u" else view > 0)

    @classmethod
    def adopt(cls, ref: RoiRef, mask: np.ndarray) -> "ReportRoi":
        """ReportRoi(ref, mask) without the copy, for a bool mask its owner no longer changes: it is
        made read-only and kept. (A new 200 x 512 x 512 mask is ~50 MB of fresh memory to fault in.)"""
        mask.flags.writeable = False
        return cls(ref, mask)

    @cached_property
    def areas(self) -> np.ndarray:
        """Voxels of the mask in each z slice (int64, length z). Counted once: the SEG and the
        summary both ask which slices the ROI covers, and a full-volume scan costs ~10 ms."""
        return np.array([np.count_nonzero(s) for s in self.mask], dtype=np.int64)

    @cached_property
    def digest(self) -> str:
        """mask_digest of the mask, kept: the analysis key is derived twice per run (the driver
        needs the SR UID before the outputs are built)."""
        return mask_digest(self.mask)

    @cached_property
    def box(self) -> tuple[slice, slice, slice]:
        """The smallest (z, y, x) box holding the mask, as index slices (voxels)."""
        return bounding_box(self.mask)  # never None: the mask is not empty

    def describe(self) -> str:
        return f"{self.ref.name} {self.ref.label or ''} ({self.ref.source})".replace("  ", " ")


@dataclass(frozen=True)
class Reference:
    """The reference series the masks (and the ECV map) lie on: its instances in the masks' z
    order, or one enhanced multi-frame instance and the frame number (1-based) of each z slice."""

    datasets: tuple[Dataset, ...]
    frame_numbers: tuple[int, ...] | None = None

    def __init__(self, datasets: Sequence[Dataset], frame_numbers: Sequence[int] | None = None):
        if not datasets:
            raise ValueError("reference series has no instances")
        object.__setattr__(self, "datasets", tuple(datasets))
        n = int(self.datasets[0].get("NumberOfFrames", 1) or 1)
        if len(self.datasets) == 1 and n > 1:
            frames = tuple(int(f) for f in frame_numbers) if frame_numbers is not None else tuple(range(1, n + 1))
            if sorted(frames) != list(range(1, n + 1)):
                raise ValueError(f"frame numbers {frames} are not a permutation of the {n} frames of the reference")
            object.__setattr__(self, "frame_numbers", frames)
        else:
            if frame_numbers is not None and any(f is not None for f in frame_numbers):
                raise ValueError("frame numbers are only for a single multi-frame reference instance")
            object.__setattr__(self, "frame_numbers", None)

    @classmethod
    def from_volume(cls, volume, datasets: Sequence[Dataset]) -> "Reference":
        """Order `datasets` as the slices of `volume` (hccnode.imaging.volumes.Volume)."""
        by_uid = {str(d.SOPInstanceUID): d for d in datasets}
        missing = [u for u in dict.fromkeys(volume.sop_instance_uids) if u not in by_uid]
        if missing:
            raise ValueError(f"reference datasets lack {len(missing)} instance(s) of the volume, e.g. {missing[0]}")
        if any(f is not None for f in volume.frame_numbers):
            return cls([by_uid[volume.sop_instance_uids[0]]], volume.frame_numbers)
        return cls([by_uid[u] for u in volume.sop_instance_uids])

    @property
    def multiframe(self) -> bool:
        return self.frame_numbers is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.datasets[0]
        z = len(self.frame_numbers) if self.multiframe else len(self.datasets)
        return z, int(first.Rows), int(first.Columns)

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def study_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    def check(self, array: np.ndarray, what: str) -> None:
        if tuple(array.shape) != self.shape:
            raise ValueError(f"{what}: shape {tuple(array.shape)} is not the reference series' grid {self.shape} (z, y, x)")

    def sources_for(self, slices: np.ndarray) -> tuple[list[Dataset], np.ndarray]:
        """Source datasets, and the z indices to encode in their order: only the given slices
        for single-frame sources; every frame, in frame order, for a multi-frame source
        (highdicom maps pixel frames to all of its frames)."""
        if self.multiframe:
            return list(self.datasets), np.argsort(self.frame_numbers)
        idx = np.flatnonzero(slices)
        return [self.datasets[i] for i in idx], idx

    def source_of(self, k: int) -> tuple[Dataset, int | None]:
        """The instance (and frame number, multi-frame only) z slice k comes from."""
        if self.multiframe:
            return self.datasets[0], self.frame_numbers[k]
        return self.datasets[k], None


def run_of(idx: np.ndarray) -> slice | None:
    """`idx` (increasing z indices) as a slice when they are consecutive, else None: a volume's
    slices taken with a slice are a view, with an index array a new copy (~50 MB a mask of
    200 x 512 x 512, and each new large array costs its page faults)."""
    if len(idx) and int(idx[-1]) - int(idx[0]) == len(idx) - 1 and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return None


def analysis_key(sources: Sequence[Dataset], reference: Reference, rois: Sequence[ReportRoi],
                 labs_used: Sequence[LabRef], model_results: Sequence[dict], template_digest: str) -> str:
    """A UID naming this analysis: what decides the outputs' content (see hccnode.report.uids)."""
    return uid_from({
        "sources": sorted(str(d.SOPInstanceUID) for d in sources),
        "reference": [str(d.SOPInstanceUID) for d in reference.datasets],
        "rois": [{"ref": r.ref.key(), "mask": r.digest} for r in rois],
        "labs": sorted((asdict(lab) for lab in labs_used), key=lambda d: (d["name"], d["time"])),
        # card versions and the inputs each got (clinical inputs come from outside the images)
        "cards": sorted(([f"{r.get('card_id')}@{r.get('card_version')}", r.get("inputs_used") or {}]
                         for r in model_results), key=lambda c: c[0]),
        "software": hccnode.__version__,
        "template": template_digest,
    })


@dataclass(frozen=True)
class Tracking:
    """How an ROI is named across the SEG and the SR (TID 4108 tracking identifier and UID)."""

    segment_number: int
    identifier: str
    uid: str


def tracking(rois: Sequence[ReportRoi], reference: Reference, labels: dict[str, str]) -> list[Tracking]:
    """One Tracking per ROI, in order. The UID follows the ROI, not the analysis: a reader's ROI
    keeps its UID across re-analyses (annotation UID + label), an automatic one per reference series.
    `labels` maps a role to its display label (from the SR template)."""
    per_role = Counter(r.ref.name for r in rois)
    count: Counter = Counter()
    seen: Counter = Counter()
    out: list[Tracking] = []
    for i, r in enumerate(rois, 1):
        uid = uid_from("tracking", r.ref.key(), None if r.ref.source == READER else reference.series_uid)
        seen[uid] += 1
        if seen[uid] > 1:  # two ROIs with identical provenance: still distinct tracking UIDs
            uid = uid_from("tracking", uid, seen[uid])
        count[r.ref.name] += 1
        text = labels.get(r.ref.name, r.ref.name)
        if "(lesion " in (r.ref.label or ""):  # one of several lesions (hccnode.pipeline.lesions): its own name
            text = r.ref.label
        elif per_role[r.ref.name] > 1:
            text += f" {count[r.ref.name]}"
        text += f" ({r.ref.source})"
        out.append(Tracking(i, text[:64], uid))
    return out
