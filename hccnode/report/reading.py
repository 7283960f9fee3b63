"""What a reader needs beside a number: its unit as written for people, the contrast phase and delay
it was measured at, the level (images, z) of its ROI and the lesion the ROI belongs to.

Pure functions over the Measurement records and the report inputs; the SR (hccnode.report.sr) codes
these, the summary page (hccnode.report.summary) prints them. Labels, display units and phase
codes are data in sr_templates/measurements.toml.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from hccnode.imaging.measure import Measurement, SeriesRef
from hccnode.imaging.phase_rules import PHASES
from hccnode.report.inputs import Reference, ReportRoi

# UCUM unit pairs the SR converts between: the same quantity, a fixed factor (UCUM: % = 10^-2 . 1).
FACTORS = {("1", "%"): 100.0, ("%", "1"): 0.01}
_LESION = re.compile(r"lesion (\d+)")
_PHASE_WORDS = {p: re.compile(r"\b" + p.replace("_", "[ _-]") + r"\b", re.IGNORECASE) for p in PHASES}


def convert(value: float, unit: str, to: str) -> float:
    """`value` in UCUM `unit` expressed in `to`; ValueError when the node knows no exact factor."""
    if unit == to:
        return value
    if (unit, to) not in FACTORS:
        raise ValueError(f"no conversion from {unit!r} to {to!r}")
    return value * FACTORS[(unit, to)]


def contrast_phase(series: SeriesRef) -> str | None:
    """The contrast phase (hccnode.imaging.phase_rules.PHASES) a series was used as, read from its
    phase name ('equilibrium iodine map' -> 'equilibrium'); None for MR sequences (T2, ADC)."""
    for phase, word in _PHASE_WORDS.items():
        if word.search(series.phase):
            return phase
    return None


def phases_of(m: Measurement) -> list[tuple[str, float | None]]:
    """(contrast phase, delay after contrast start in s or None) of each series a value used, in
    order, once per phase."""
    out: dict[str, float | None] = {}
    for s in m.series:
        phase = contrast_phase(s)
        if phase is not None and (phase not in out or out[phase] is None):
            out[phase] = s.delay_s
    return list(out.items())


def phase_text(m: Measurement) -> str:
    """'unenhanced + equilibrium (180 s after contrast start)', or the MR sequence names."""
    parts = [p.replace("_", " ") + (f" ({d:g} s after contrast start)" if d is not None else "")
             for p, d in phases_of(m)]
    return " + ".join(parts) or ", ".join(dict.fromkeys(s.phase for s in m.series))


def _z(reference: Reference, k: int) -> float | None:
    ds, frame = reference.source_of(k)
    try:
        if frame is not None:
            item = ds.PerFrameFunctionalGroupsSequence[frame - 1]
            return float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        return float(ds.ImagePositionPatient[2])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


def _image(reference: Reference, k: int) -> str:
    ds, frame = reference.source_of(k)
    return f"frame {frame}" if frame is not None else f"image {ds.get('InstanceNumber', '?')}"


def roi_level(roi: ReportRoi, reference: Reference | None) -> str:
    """Where an ROI lies along the patient: the images (instance or frame numbers) of the reference
    series it covers, their z positions (mm, patient coordinates) and its largest section."""
    ks = np.flatnonzero(roi.areas)
    first, last, big = int(ks[0]), int(ks[-1]), int(np.argmax(roi.areas))
    if reference is None:
        return f"slices {first + 1} to {last + 1}, largest section on slice {big + 1}"
    series = reference.datasets[0].get("SeriesNumber", "?")
    ends = sorted({_image(reference, first), _image(reference, last)}, key=lambda t: (len(t), t))
    images = ends[0] if len(ends) == 1 else f"{ends[0]} to {ends[1].split()[-1]}"
    z = [_z(reference, k) for k in (first, last, big)]
    where = ""
    if None not in z:
        where = f" (z {z[0]:.1f} mm)" if first == last else f" (z {min(z[:2]):.1f} to {max(z[:2]):.1f} mm)"
    text = f"series {series}, {images}{where}, {len(ks)} slice{'s' if len(ks) > 1 else ''}"
    return text + f"; largest section on {_image(reference, big)}" + (f" (z {z[2]:.1f} mm)" if z[2] is not None else "")


def lesion_of(roi: ReportRoi, rois: Sequence[ReportRoi]) -> str | None:
    """The lesion a tumour ROI belongs to ('lesion 2 of 3', or 'lesion 1 of 1' when the study has
    one), and whether it is the lesion's extent or its measurement ROIs; None for other roles."""
    if roi.ref.name != "tumor":
        return None
    label = roi.ref.label or ""
    found = _LESION.search(label)
    numbered = {m.group(1) for m in (_LESION.search(r.ref.label or "") for r in rois if r.ref.name == "tumor") if m}
    lesion = f"lesion {found.group(1) if found else 1} of {len(numbered) or 1}"
    part = "extent" if "extent" in label.lower() else "measurement ROIs" if "measurement" in label.lower() else ""
    return f"{lesion}" + (f" ({part})" if part else "")


def earlier_study(m: Measurement) -> str:
    """'baseline' for a value of the paired earlier study (hccnode.pipeline.mr names its series
    'baseline T2', 'baseline ADC' and puts 'baseline study: lesion ..., ROI level ...' first in its
    notes, since its ROIs are not in this analysis' SEG); '' for this study's own values."""
    first = {s.phase.split()[0] for s in m.series if s.phase}
    return "baseline" if first == {"baseline"} else ""


def earlier_levels(measurements: Sequence[Measurement]) -> list[str]:
    """The level and lesion notes of the earlier study's values, once each."""
    return list(dict.fromkeys(n for m in measurements if (when := earlier_study(m))
                              for n in m.notes if n.startswith(f"{when} study: ")))
