"""A stored study as the analysis sees it: phase decisions, series files, volumes, annotations.

Everything comes from the node's store (index rows and spool files). Volumes are read once and
cached; a series that cannot become a volume is recorded in `problems` (naming the series and
the problem, never the patient) and the analysis goes on without it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from hccnode import log
from hccnode.imaging.phase_index import classify_and_keep_headers
from hccnode.imaging.phase_rules import RuleSet
from hccnode.imaging.phases import Decision
from hccnode.imaging.rois import RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS
from hccnode.imaging.volumes import DEFER_BYTES, SeriesError, Volume, read_series
from hccnode.report.outputs import output_uids
from hccnode.store import studies
from hccnode.store.db import Store

# Conventional CT kinds by contrast phase (hccnode.imaging.phases), and the phase DECT kinds name.
CT_KINDS = {"unenhanced": "ct_unenhanced", "arterial": "ct_arterial", "portal_venous": "ct_portal_venous",
            "equilibrium": "ct_equilibrium"}
ANNOTATION_SOP_CLASSES = {SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS}
SR_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


class StudyError(Exception):
    """A study the pipeline cannot analyse at all (not stored, no image series)."""


class NotApplicable(StudyError):
    """A study the analysis does not apply to: it holds no CT or MR image series that can be read
    as a volume (RT objects, US, ECG, SR alone, secondary capture, a localiser only). Its job ends
    at once in state `not_applicable` with this reason; it is never retried."""


@dataclass
class Series:
    uid: str
    number: int | None
    description: str
    modality: str | None
    sop_class: str
    paths: list[Path]
    decision: Decision | None = None

    @property
    def kind(self) -> str:
        return self.decision.kind if self.decision else "other"

    @property
    def phase(self) -> str | None:
        return self.decision.phase if self.decision else None

    @property
    def kev(self) -> float | None:
        return self.decision.kev if self.decision else None

    def describe(self) -> str:
        return f"series {self.number if self.number is not None else '?'} ({self.uid})"


@dataclass
class Study:
    """One stored study. Build with `Study.load(store, study_uid)`."""

    store: Store
    uid: str
    series: list[Series]
    decisions: list[Decision]
    problems: list[str] = field(default_factory=list)
    _volumes: dict[str, Volume | None] = field(default_factory=dict)
    _headers: dict[str, list[Dataset]] = field(default_factory=dict)

    @classmethod
    def load(cls, store: Store, study_uid: str, rules: RuleSet | None = None) -> "Study":
        rows = studies.instances_of(store, study_uid)
        if not rows:
            raise StudyError(f"study {study_uid}: not in the node's store")
        by_series: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            by_series[r["series_uid"]].append(r)
        decisions, read = classify_and_keep_headers(store, study_uid, rules)
        by_uid = {d.series_uid: d for d in decisions}
        series, headers = [], {}
        for uid, items in by_series.items():
            first = items[0]
            paths = [store.data_dir / r["path"] for r in items]
            series.append(Series(uid, first["series_number"], first["series_description"] or "", first["modality"],
                                 first["sop_class_uid"], paths, by_uid.get(uid)))
            if [path for path, _ in read.get(uid, [])] == paths:  # the same files in the same order
                headers[uid] = [ds for _, ds in read[uid]]
        series.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))
        return cls(store, study_uid, series, decisions, _headers=headers)

    # ------------------------------------------------------------------ finding series

    def of_kind(self, kind: str, phase: str | None = None) -> list[Series]:
        return [s for s in self.series if s.kind == kind and (phase is None or s.phase == phase)]

    def first(self, kind: str, phase: str | None = None) -> Series | None:
        found = self.of_kind(kind, phase)
        return found[0] if found else None

    def ct(self, phase: str) -> Series | None:
        """The conventional CT series of a contrast phase."""
        return self.first(CT_KINDS[phase])

    def vmi(self, phase: str, kev: float, tolerance_kev: float = 0.5) -> Series | None:
        """A virtual monoenergetic series of `phase` at `kev` (within `tolerance_kev`)."""
        for s in self.of_kind("dect_vmi", phase):
            if s.kev is not None and abs(s.kev - kev) <= tolerance_kev:
                return s
        return None

    def anatomy(self, phase: str) -> Series | None:
        """The image of a phase to register with: its conventional CT, else its VMI nearest 70 keV
        (the energy closest to a conventional 120 kVp image)."""
        s = self.ct(phase)
        if s is not None:
            return s
        vmis = [v for v in self.of_kind("dect_vmi", phase) if v.kev is not None]
        return min(vmis, key=lambda v: abs(v.kev - 70.0)) if vmis else None

    def own_output_series(self) -> set[str]:
        """Series UIDs the node's own outputs for this study use (hccnode.report.outputs), so a
        returned SR or SEG of ours is never read as a reader's annotation."""
        own = set()
        for s in self.series:
            own |= {series for series, _ in output_uids("-", self.uid, s.uid).values()}
        return own

    def annotation_series(self) -> list[Series]:
        own = self.own_output_series()
        return [s for s in self.series if s.uid not in own
                and (s.sop_class in ANNOTATION_SOP_CLASSES or s.sop_class.startswith(SR_SOP_PREFIX))]

    # ------------------------------------------------------------------ reading

    def volume(self, series: Series) -> Volume | None:
        """The series as a volume; None (with the reason in `problems`) when it is not one."""
        if series.uid not in self._volumes:
            try:
                volume = read_series(series.paths, self._headers.get(series.uid))
                if volume.frame_of_reference_uid is None:  # Type 1 in CT and MR images (PS3.3 C.7.4.1)
                    raise SeriesError("no Frame of Reference UID: the SEG and map of its ROIs could not be placed")
                self._volumes[series.uid] = volume
            except SeriesError as exc:
                self._unusable(series, exc.problem)
            except Exception:  # noqa: BLE001 - a header no reader foresaw: the series is left out, never the study
                self._unusable(series, "its images cannot be read as a volume", exc_info=True)
        return self._volumes[series.uid]

    def _unusable(self, series: Series, problem: str, exc_info: bool = False) -> None:
        self.problems.append(f"{series.describe()} not used: {problem}")
        log.event("pipeline.series_unusable", study=self.uid, series=series.uid, problem=problem, exc_info=exc_info)
        self._volumes[series.uid] = None

    def headers(self, series: Series) -> list[Dataset]:
        if series.uid not in self._headers:
            self._headers[series.uid] = [pydicom.dcmread(p, defer_size=DEFER_BYTES) for p in series.paths]
        return self._headers[series.uid]

    def first_header(self) -> Dataset:
        image = next((s for s in self.series if s.modality in ("CT", "MR")), self.series[0])
        return self.headers(image)[0]

    def patient(self) -> tuple[str | None, str | None]:
        """(Patient ID, Issuer of Patient ID) for matching labs. Kept in memory only: never logged."""
        ds = self.first_header()
        pid = str(ds.get("PatientID", "") or "") or None
        issuer = str(ds.get("IssuerOfPatientID", "") or "") or None
        return pid, issuer

    def scan_time(self, series: Series | None = None) -> datetime | None:
        """When `series` (else the study) was acquired: Acquisition Date/Time of its first image,
        else Series, Study Date/Time. Naive (the scanner's local time, as DICOM writes it)."""
        ds = self.headers(series)[0] if series is not None else self.first_header()
        for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"),
                                 ("StudyDate", "StudyTime")):
            t = dicom_datetime(ds.get(date_kw), ds.get(time_kw))
            if t is not None:
                return t
        return None


def dicom_datetime(date, time) -> datetime | None:
    """DA + TM -> datetime (None when the date is missing or malformed)."""
    d = str(date or "").strip()
    if len(d) != 8 or not d.isdigit():
        return None
    t = str(time or "").strip().split(".")[0].ljust(6, "0")[:6]
    if not t.isdigit():
        t = "000000"
    try:
        return datetime.strptime(d + t, "%Y%m%d%H%M%S")
    except ValueError:
        return None
