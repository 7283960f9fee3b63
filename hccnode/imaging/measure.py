"""The record every measurement carries: value, unit, and where it came from.

A measurement the node could not make is still a record: value None and a reason, so the SR
and the audit say what is missing and why instead of leaving a gap.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import hccnode

READER = "reader"
AUTOMATIC = "automatic"
# Placed by the node's ROI rules inside a whole-organ mask from a site's segmentation tool
# (hccnode.imaging.organ_masks); `RoiRef.placed_in` names the mask and the tool.
ORGAN_MASK = "organ mask"
SOURCES = (READER, AUTOMATIC, ORGAN_MASK)

# Formula id -> (unit in UCUM, where it is defined). The id names the paper file and formula.
FORMULAS: dict[str, tuple[str, str]] = {
    "paper001.ecv_cect": ("%", "001_c4ba0269da651d59.txt, Methods: Extracellular volume fraction analysis"),
    "paper000.nic": ("1", "000_1e01a252ba479b1c.txt, Methods 2.2 (equilibrium iodine map)"),
    "paper000.ecv_dect": ("1", "000_1e01a252ba479b1c.txt, Methods 2.2 (ECV = NIC x (1 - HCT), a fraction)"),
    "paper002.nic_ap": ("%", "002_d8ba87fc522cbbc2.txt, Methods: DECT and perfusion quantitative analysis"),
    "paper002.lambda_hu": ("[hnsf'U]/keV", "002_d8ba87fc522cbbc2.txt, Methods: DECT and perfusion quantitative analysis"),
    "paper003.t2_sir": ("1", "003_12b417b4b575f485.txt, Methods: Image analysis"),
    "paper003.adc_mean": ("10*-3.mm2/s", "003_12b417b4b575f485.txt, Methods: Image analysis"),
    "paper003.adc_max": ("10*-3.mm2/s", "003_12b417b4b575f485.txt, Methods: Image analysis"),
    "paper003.adc_min": ("10*-3.mm2/s", "003_12b417b4b575f485.txt, Methods: Image analysis"),
    "paper003.adc_heterogeneity": ("1", "003_12b417b4b575f485.txt, Methods: Image analysis"),
    "size.max_inplane_diameter": ("mm", "papers 002/003: longest diameter on the slice of maximal extent"),
    "size.volume": ("mL", "voxel count x voxel volume (not used by the papers' models)"),
}


@dataclass(frozen=True)
class RoiRef:
    """The region a value was measured in: role name (tumor, liver, aorta, muscle), who drew it
    (READER, AUTOMATIC, or ORGAN_MASK: placed by the node inside a site's organ mask), and the SOP
    Instance UID of the annotation object (a reader's, or the SEG holding the organ mask)."""

    name: str
    source: str
    annotation_uid: str | None = None
    label: str | None = None  # the label as written in the annotation (segment / ROI name)
    placed_in: str | None = None  # ORGAN_MASK: the organ mask and the tool that drew it

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"ROI source must be one of {', '.join(map(repr, SOURCES))}, got {self.source!r}")

    def key(self) -> dict:
        """The fields as a dict for deriving UIDs; `placed_in` only when set, so the UIDs of the
        reader's and automatic ROIs are those they had before organ masks."""
        d = asdict(self)
        if d["placed_in"] is None:
            del d["placed_in"]
        return d


@dataclass(frozen=True)
class SeriesRef:
    """An input series, the contrast phase (or MR sequence) it was used as and, where its headers
    give it, its delay after the start of contrast injection in seconds
    (hccnode.imaging.phase_timing)."""

    series_uid: str
    phase: str
    delay_s: float | None = None


@dataclass(frozen=True)
class LabRef:
    """The laboratory value a formula used: name, value in `unit` (UCUM), time it was taken
    (ISO 8601), and where it came from (e.g. 'hl7:ORU^R01 <message control id>', 'csv:<file>:<row>')."""

    name: str
    value: float
    unit: str
    time: str
    source: str


@dataclass(frozen=True)
class Measurement:
    """One marker value with its provenance. JSON-serialisable through `to_dict` / `to_json`.

    `unit` is UCUM ('%', '1', 'mg/mL', '[hnsf\\'U]', 'mm', 'mL', '10*-3.mm2/s', '[hnsf\\'U]/keV').
    `formula` names the paper and formula, e.g. 'paper001.ecv_cect'.
    When `value` is None, `reason` says why; `lab_missing_reason` says why a lab is absent.
    `input_unit` says in which unit an input image's values were read and why, when the image's
    header alone does not settle it (an ADC map: hccnode.imaging.adc_unit).
    `notes` say which lesion and which reference ROI (at which level) a value comes from.
    """

    marker: str
    value: float | None
    unit: str
    formula: str
    roi: RoiRef | None = None
    series: tuple[SeriesRef, ...] = ()
    lab: LabRef | None = None
    lab_missing_reason: str | None = None
    registration: dict | None = None
    reason: str | None = None
    software_version: str = field(default=hccnode.__version__)
    input_unit: str | None = None
    notes: tuple[str, ...] = ()  # how it was measured where the protocol matters (lesion, reference level)

    def __post_init__(self) -> None:
        if self.formula in FORMULAS and FORMULAS[self.formula][0] != self.unit:
            raise ValueError(f"{self.marker}: formula {self.formula} is in {FORMULAS[self.formula][0]!r}, not {self.unit!r}")
        if self.value is None and not self.reason:
            raise ValueError(f"{self.marker}: a missing value needs a reason")
        if self.value is not None:
            if not math.isfinite(self.value):
                raise ValueError(f"{self.marker}: value {self.value!r} is not finite; record it as missing with a reason")
            object.__setattr__(self, "value", float(self.value))

    @classmethod
    def of(cls, formula: str, marker: str, value: float | None, **kw) -> "Measurement":
        """A measurement of a known formula id, in that formula's unit."""
        if formula not in FORMULAS:
            raise ValueError(f"unknown formula id {formula!r}")
        return cls(marker=marker, value=value, unit=FORMULAS[formula][0], formula=formula, **kw)

    @classmethod
    def missing(cls, marker: str, unit: str, formula: str, reason: str, **kw) -> "Measurement":
        return cls(marker=marker, value=None, unit=unit, formula=formula, reason=reason, **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        # a delay only where the headers gave one: records of series without it stay as they were
        d["series"] = [{k: v for k, v in asdict(s).items() if k != "delay_s" or v is not None} for s in self.series]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        d = dict(d)
        d["roi"] = RoiRef(**d["roi"]) if d.get("roi") else None
        d["lab"] = LabRef(**d["lab"]) if d.get("lab") else None
        d["series"] = tuple(SeriesRef(**s) for s in d.get("series") or ())
        d["notes"] = tuple(d.get("notes") or ())
        return cls(**d)
