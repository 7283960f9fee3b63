"""What the output builders take: the reference grid, the ROIs on it, and the analysis key.

Masks are numpy bool arrays (z, y, x) on the reference series' grid; `Reference.datasets` are that
series' instances in the same z order (or one enhanced multi-frame instance with one frame per z).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

import hccnode
from hccnode.imaging.measure import READER, LabRef, RoiRef
from hccnode.report.uids import mask_digest, uid_from


@dataclass(frozen=True)
class ReportRoi:
    """One measured region: its provenance (RoiRef) and its mask on the reference grid."""

    ref: RoiRef
    mask: np.ndarray

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask)
        if mask.ndim != 3:
            raise ValueError(f"ROI {self.describe()}: mask must be 3-D (z, y, x), got shape {mask.shape}")
        mask = mask.astype(bool)
        if not mask.any():
            raise ValueError(f"ROI {self.describe()}: mask is empty")
        object.__setattr__(self, "mask", mask)

    @classmethod
    def from_roi_mask(cls, roi) -> "ReportRoi":
        """From hccnode.imaging.rois.RoiMask (SimpleITK mask on the reference grid)."""
        return cls(roi.ref, sitk.GetArrayFromImage(roi.mask) > 0)

    def describe(self) -> str:
        who = "reader" if self.ref.source == READER else "automatic"
        return f"{self.ref.name} {self.ref.label or ''} ({who})".replace("  ", " ")


@dataclass(frozen=True)
class Reference:
    """The reference series the masks (and the ECV map) lie on."""

    datasets: tuple[Dataset, ...]

    def __init__(self, datasets: Sequence[Dataset]):
        if not datasets:
            raise ValueError("reference series has no instances")
        object.__setattr__(self, "datasets", tuple(datasets))

    @property
    def multiframe(self) -> bool:
        return len(self.datasets) == 1 and int(self.datasets[0].get("NumberOfFrames", 1) or 1) > 1

    @property
    def shape(self) -> tuple[int, int, int]:
        first = self.datasets[0]
        z = int(first.NumberOfFrames) if self.multiframe else len(self.datasets)
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
        """Source datasets and slice indices to encode: only the given slices for single-frame
        sources; every frame for a multi-frame source (highdicom maps frames to all of its frames)."""
        if self.multiframe:
            return list(self.datasets), np.arange(self.shape[0])
        idx = np.flatnonzero(slices)
        return [self.datasets[i] for i in idx], idx


def analysis_key(sources: Sequence[Dataset], reference: Reference, rois: Sequence[ReportRoi],
                 labs_used: Sequence[LabRef], model_results: Sequence[dict], template_digest: str,
                 extra: Any = None) -> str:
    """A UID naming this analysis: what decides the outputs' content (see hccnode.report.uids)."""
    return uid_from({
        "sources": sorted(str(d.SOPInstanceUID) for d in sources),
        "reference": [str(d.SOPInstanceUID) for d in reference.datasets],
        "rois": [{"ref": asdict(r.ref), "mask": mask_digest(r.mask)} for r in rois],
        "labs": sorted((asdict(lab) for lab in labs_used), key=lambda d: (d["name"], d["time"])),
        "cards": sorted(f"{r.get('card_id')}@{r.get('card_version')}" for r in model_results),
        "software": hccnode.__version__,
        "template": template_digest,
        "extra": extra,
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
    out: list[Tracking] = []
    seen: dict[str, int] = {}
    per_role: dict[str, int] = {}
    for r in rois:
        per_role[r.ref.name] = per_role.get(r.ref.name, 0) + 1
    count: dict[str, int] = {}
    for i, r in enumerate(rois, 1):
        key = uid_from("tracking", asdict(r.ref), None if r.ref.source == READER else reference.series_uid)
        seen[key] = seen.get(key, 0) + 1
        uid = key if seen[key] == 1 else uid_from("tracking", key, seen[key])
        count[r.ref.name] = count.get(r.ref.name, 0) + 1
        text = labels.get(r.ref.name, r.ref.name)
        if per_role[r.ref.name] > 1:
            text += f" {count[r.ref.name]}"
        text += " (reader)" if r.ref.source == READER else " (automatic)"
        out.append(Tracking(i, text[:64], uid))
    return out
