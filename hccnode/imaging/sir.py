"""MRI markers of paper 003 (papers/003_12b417b4b575f485.txt, Methods "Image analysis").

Three ROIs in the solid tumor on the slice of maximum tumor diameter (avoiding margin, large
vessels, cyst and necrosis); ADC and T2 signal measured in each, "the average of the three
measurements was adopted". One ROI in the erector spinae muscle on the same slice is the T2
reference. T2 SIR = tumor T2 SI / muscle T2 SI; ADC heterogeneity = (ADCmax - ADCmin) / ADCmean;
the same at baseline and 8 weeks after treatment. ADC reported in 10^-3 mm^2/s.

The paper does not define ADCmax / ADCmin beyond the names. We read them as what a workstation
ROI tool reports per ROI (voxel maximum and minimum), averaged over the ROIs like the mean; with a
single ROI (e.g. a reader's whole-tumor segmentation) they are the voxel extremes in that ROI.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hccnode.imaging.adc_unit import UNIT_TO_MM2S

# Scale factors from a stored ADC unit to 10^-3 mm^2/s. Vendors write ADC maps in 10^-6 mm^2/s
# (common), 10^-3 mm^2/s or mm^2/s, so the caller says which (hccnode.imaging.adc_unit decides it).
ADC_UNIT_TO_1E3 = {unit: per_unit * 1e3 for unit, per_unit in UNIT_TO_MM2S.items()}


def t2_sir(tumor_t2_si: float, muscle_t2_si: float) -> float:
    """T2 signal intensity ratio = tumor T2 SI / erector spinae T2 SI (dimensionless). Paper 003."""
    if not np.isfinite(muscle_t2_si) or muscle_t2_si <= 0:
        raise ValueError(f"muscle T2 signal must be > 0, got {muscle_t2_si}")
    if not np.isfinite(tumor_t2_si):
        raise ValueError(f"tumor T2 signal is not finite: {tumor_t2_si}")
    return float(tumor_t2_si) / float(muscle_t2_si)


@dataclass(frozen=True)
class AdcStats:
    """ADC statistics in 10^-3 mm^2/s; heterogeneity dimensionless. Paper 003."""

    mean: float
    max: float
    min: float
    heterogeneity: float
    n_rois: int
    n_voxels: int


def adc_heterogeneity(adc_max: float, adc_min: float, adc_mean: float) -> float:
    """ADC heterogeneity = (ADCmax - ADCmin) / ADCmean (dimensionless). Paper 003."""
    if not np.isfinite(adc_mean) or adc_mean <= 0:
        raise ValueError(f"ADC mean must be > 0, got {adc_mean}")
    return (float(adc_max) - float(adc_min)) / float(adc_mean)


def adc_stats(roi_values: Sequence[np.ndarray], unit: str) -> AdcStats:
    """ADC mean / max / min / heterogeneity from the voxel values of one or more tumor ROIs.

    `roi_values`: one array of ADC voxel values per ROI, stored in `unit` (a key of
    ADC_UNIT_TO_1E3). Per ROI the voxel mean, max and min are taken; each is averaged over the
    ROIs (paper 003 averages its three measurements). Heterogeneity uses the averaged values.
    """
    if unit not in ADC_UNIT_TO_1E3:
        raise ValueError(f"ADC unit {unit!r} not understood; expected one of {sorted(ADC_UNIT_TO_1E3)}")
    scale = ADC_UNIT_TO_1E3[unit]
    rois = [np.asarray(v, dtype=float).ravel() * scale for v in roi_values]
    if not rois or any(r.size == 0 for r in rois):
        raise ValueError("ADC needs at least one non-empty ROI")
    if any(not np.all(np.isfinite(r)) for r in rois):
        raise ValueError("non-finite ADC voxel value in ROI")
    mean = float(np.mean([r.mean() for r in rois]))
    vmax = float(np.mean([r.max() for r in rois]))
    vmin = float(np.mean([r.min() for r in rois]))
    return AdcStats(mean, vmax, vmin, adc_heterogeneity(vmax, vmin, mean), len(rois), sum(r.size for r in rois))


@dataclass(frozen=True)
class Change:
    """Follow-up minus baseline, in the marker's unit, and relative to baseline (%, None if the
    baseline is 0)."""

    baseline: float
    follow_up: float
    absolute: float
    percent: float | None


def change(baseline: float, follow_up: float) -> Change:
    """Baseline to follow-up change (paper 003 compares baseline with 8 weeks after treatment)."""
    d = float(follow_up) - float(baseline)
    pct = None if baseline == 0 else 100.0 * d / abs(float(baseline))
    return Change(float(baseline), float(follow_up), d, pct)
