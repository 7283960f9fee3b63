"""MRI markers of paper 003 (papers/003_12b417b4b575f485.txt, Methods "Image analysis"): T2 SIR
(tumor / erector spinae on the T2 series) and ADC mean, max, min and heterogeneity in the tumor,
at baseline and follow-up. Orchestration only: the formulas are hccnode.imaging.sir.

The ADC map's unit is decided by hccnode.imaging.adc_unit: its Real World Value Mapping, else the
site's configuration or a cited vendor convention for its Manufacturer, checked against the values
of the tissues in the map; else the tissue values alone when unambiguous. Conflicting evidence is
not measured, with the conflict named. The decision goes with each ADC value (`input_unit`, an
algorithm parameter in the SR). A site's units reach the analysis through `site_adc_units`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from hccnode.imaging import adc_unit, sir
from hccnode.imaging.measure import FORMULAS, Measurement, SeriesRef
from hccnode.imaging.volumes import Volume
from hccnode.pipeline import levels
from hccnode.pipeline.align import Aligner
from hccnode.pipeline.findings import Findings, mean_over, values_in
from hccnode.pipeline.regions import Regions
from hccnode.pipeline.study import Study

ADC_FORMULAS = {"mean": "paper003.adc_mean", "max": "paper003.adc_max", "min": "paper003.adc_min",
                "heterogeneity": "paper003.adc_heterogeneity"}


_SITE_UNITS: ContextVar[Mapping[str, str]] = ContextVar("hccnode_adc_site_units", default={})


@contextmanager
def site_adc_units(units: Mapping[str, str] | None) -> Iterator[None]:
    """Analyses run inside use the site's ADC units per Manufacturer (config [adc] units)."""
    token = _SITE_UNITS.set(dict(units or {}))
    try:
        yield
    finally:
        _SITE_UNITS.reset(token)


def adc_decision(ds: Dataset, values: np.ndarray) -> tuple[adc_unit.UnitDecision, adc_unit.HeaderUnit | None]:
    """The unit of an ADC map (first header `ds`, volume `values`) and the header's linear
    mapping when its Real World Value Mapping states the unit."""
    header = adc_unit.header_unit(ds)
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    if header is not None and (header.slope != 1.0 or header.intercept != 0.0):
        values = np.asarray(values, dtype=np.float64) * header.slope + header.intercept
    checks = adc_unit.check_scales(values)
    site = adc_unit.site_unit(manufacturer, _SITE_UNITS.get())
    convention = adc_unit.find_convention(manufacturer, str(ds.get("ManufacturerModelName", "") or ""),
                                          str(ds.get("SoftwareVersions", "") or ""))
    return adc_unit.decide(manufacturer, checks, header.unit if header else None, site, convention), header


def measure_mr(study: Study, t2: Volume, aligner: Aligner, regions: Regions, f: Findings, when: str = "") -> None:
    """T2 SIR and ADC statistics of each lesion (its ROIs; the muscle on its slices). `when` ("baseline") suffixes markers and phases
    for values of an earlier study reported alongside the current one."""
    tag = f"_{when}" if when else ""
    phase = f"{when} T2".strip()
    muscles = regions.arrays("muscle")
    t2_series = (SeriesRef(t2.series_uid, phase),)
    t2_a = sitk.GetArrayViewFromImage(t2.image)

    adc_series = study.first("mr_adc")
    adc_vol = study.volume(adc_series) if adc_series is not None else None
    adc_ref = (SeriesRef(adc_vol.series_uid, f"{when} ADC".strip()),) if adc_vol else ()
    why_adc, unit, adc_a, quality, decision, header = None, None, None, None, None, None
    if adc_series is None:
        why_adc = "no ADC map in the study"
    elif adc_vol is None:
        why_adc = f"{adc_series.describe()} cannot be read as a volume"
    else:
        decision, header = adc_decision(study.headers(adc_series)[0], sitk.GetArrayViewFromImage(adc_vol.image))
        unit = decision.unit
        if unit is None:
            why_adc = decision.text
        else:
            aligned = aligner.through(adc_vol, register=False, nearest=True)
            quality = aligned.quality
            if not aligned.ok:
                why_adc = aligned.problem
            else:
                adc_a = aligned.array()

    for les in regions.lesions:
        roi = les.region
        # an earlier study's ROIs are not in this SR's SEG: each value says where they lie
        where = (_level_note(study, t2, les, when),) if when else ()
        value, reason, notes = _t2_sir(t2_a, muscles, les)
        notes = where + tuple(notes)
        if reason:
            f.add(Measurement.missing(f"t2_sir_tumor{tag}", "1", "paper003.t2_sir", reason, roi=roi.ref,
                                      series=t2_series, notes=notes))
        else:
            f.add(Measurement.of("paper003.t2_sir", f"t2_sir_tumor{tag}", value, roi=roi.ref, series=t2_series,
                                 notes=notes))
        reason = why_adc
        if not reason:
            try:
                values = [values_in(adc_a, m) for m in les.rois]  # per ROI: paper 003 averages its three
                if header is not None:
                    values = [v * header.slope + header.intercept for v in values]
                stats = sir.adc_stats(values, unit)
            except ValueError as exc:
                reason = str(exc)
        for key, formula in ADC_FORMULAS.items():
            marker = f"adc_{key}_tumor{tag}"
            if reason:
                f.add(Measurement.missing(marker, FORMULAS[formula][0], formula, reason,
                                          roi=roi.ref, series=adc_ref, registration=quality, notes=where))
            else:
                f.add(Measurement.of(formula, marker, getattr(stats, key), roi=roi.ref, series=adc_ref,
                                     registration=quality, input_unit=decision.text, notes=where))


def _level_note(study: Study, t2: Volume, les, when: str) -> str:
    """'baseline study: lesion 1 of 1 (44 mm), ROI level series 3, image 3 to 9 (z ...)' for values of
    an earlier study, whose ROIs and images are not in this SR's SEG (hccnode.report.reading)."""
    from hccnode.report.inputs import Reference, ReportRoi
    from hccnode.report.reading import roi_level

    series = next((s for s in study.series if s.uid == t2.series_uid), None)
    try:
        reference = Reference.from_volume(t2, study.headers(series)) if series is not None else None
    except ValueError:
        reference = None
    level = roi_level(ReportRoi.from_roi_mask(les.region), reference)
    size = f" ({les.diameter_mm:.0f} mm)" if les.diameter_mm is not None else ""
    return f"{when} study: lesion {les.number} of {les.of}{size}, ROI level {level}"


SAME_SLICE = 'paper 003: "a single ROI was selected in the erector spinae muscle region at the same slice"'


def _t2_sir(t2_a, muscles, les) -> tuple[float | None, str | None, tuple[str, ...]]:
    """Paper 003's T2 SIR of lesion `les`: its mean T2 signal over its ROIs against the erector
    spinae on the same slices (hccnode.pipeline.levels). (value, why not, notes)."""
    if not muscles:
        return None, "no erector spinae ROI (the T2 reference of paper 003)", ()
    ring, which = levels.at_level(muscles, les.slices)
    if not ring:
        return None, f"no erector spinae ROI on the slices of {les.describe()} ({SAME_SLICE})", ()
    notes = (f"erector spinae at the level of {les.describe()}: {which} ({SAME_SLICE})",)
    try:
        return sir.t2_sir(mean_over(t2_a, les.rois), mean_over(t2_a, ring)), None, notes
    except ValueError as exc:
        return None, f"T2 signal not read: {exc}", notes
