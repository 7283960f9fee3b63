"""MRI markers of paper 003 (papers/003_12b417b4b575f485.txt, Methods "Image analysis"): T2 SIR
(tumor / erector spinae on the T2 series) and ADC mean, max, min and heterogeneity in the tumor,
at baseline and follow-up. Orchestration only: the formulas are hccnode.imaging.sir.

The ADC map's stored unit is read from its Real World Value Mapping (Measurement Units Code
Sequence, UCUM); a map that does not state it is not measured (vendors differ: 10^-6 or
10^-3 mm^2/s), never guessed.
"""

from __future__ import annotations

import SimpleITK as sitk
from pydicom.dataset import Dataset

from hccnode.imaging import sir
from hccnode.imaging.measure import FORMULAS, Measurement, SeriesRef
from hccnode.imaging.volumes import Volume
from hccnode.pipeline.align import Aligner
from hccnode.pipeline.findings import Findings, mean_in, mean_over, values_in
from hccnode.pipeline.regions import Regions
from hccnode.pipeline.study import Study

ADC_FORMULAS = {"mean": "paper003.adc_mean", "max": "paper003.adc_max", "min": "paper003.adc_min",
                "heterogeneity": "paper003.adc_heterogeneity"}


def adc_unit(ds: Dataset) -> str | None:
    """The UCUM unit of an ADC map's stored values (after rescale), if the header states one we know."""
    for item in ds.get("RealWorldValueMappingSequence", []):
        for unit in item.get("MeasurementUnitsCodeSequence", []):
            value = str(unit.get("CodeValue", ""))
            if value in sir.ADC_UNIT_TO_1E3:
                return value
    return None


def measure_mr(study: Study, t2: Volume, aligner: Aligner, regions: Regions, f: Findings, when: str = "") -> None:
    """T2 SIR and ADC statistics of each tumor ROI. `when` ("baseline") suffixes markers and phases
    for values of an earlier study reported alongside the current one."""
    tag = f"_{when}" if when else ""
    phase = f"{when} T2".strip()
    tumors, muscles = regions.arrays("tumor"), regions.arrays("muscle")
    t2_series = (SeriesRef(t2.series_uid, phase),)
    t2_a = sitk.GetArrayViewFromImage(t2.image)
    muscle_si, why_muscle = None, None
    if not muscles:
        why_muscle = "no erector spinae ROI (the T2 reference of paper 003)"
    else:
        try:
            muscle_si = mean_over(t2_a, [m for _, m in muscles])
        except ValueError as exc:
            why_muscle = f"muscle T2 signal not read: {exc}"

    adc_series = study.first("mr_adc")
    adc_vol = study.volume(adc_series) if adc_series is not None else None
    adc_ref = (SeriesRef(adc_vol.series_uid, f"{when} ADC".strip()),) if adc_vol else ()
    why_adc, unit, adc_a, quality = None, None, None, None
    if adc_series is None:
        why_adc = "no ADC map in the study"
    elif adc_vol is None:
        why_adc = f"{adc_series.describe()} cannot be read as a volume"
    else:
        unit = adc_unit(study.headers(adc_series)[0])
        if unit is None:
            why_adc = ("the ADC map does not state its unit (Real World Value Mapping, UCUM); "
                       "vendors store 10^-6 or 10^-3 mm2/s, so it is not guessed")
        else:
            aligned = aligner.through(adc_vol, register=False, nearest=True)
            quality = aligned.quality
            if not aligned.ok:
                why_adc = aligned.problem
            else:
                adc_a = aligned.array()

    for roi, mask in tumors:
        reason = why_muscle
        if not reason:
            try:
                value = sir.t2_sir(mean_in(t2_a, mask), muscle_si)
            except ValueError as exc:
                reason = str(exc)
        if reason:
            f.add(Measurement.missing(f"t2_sir_tumor{tag}", "1", "paper003.t2_sir", reason, roi=roi.ref,
                                      series=t2_series))
        else:
            f.add(Measurement.of("paper003.t2_sir", f"t2_sir_tumor{tag}", value, roi=roi.ref, series=t2_series))
        reason = why_adc
        if not reason:
            try:
                stats = sir.adc_stats([values_in(adc_a, mask)], unit)
            except ValueError as exc:
                reason = str(exc)
        for key, formula in ADC_FORMULAS.items():
            marker = f"adc_{key}_tumor{tag}"
            if reason:
                f.add(Measurement.missing(marker, FORMULAS[formula][0], formula, reason,
                                          roi=roi.ref, series=adc_ref, registration=quality))
            else:
                f.add(Measurement.of(formula, marker, getattr(stats, key), roi=roi.ref, series=adc_ref,
                                     registration=quality))
