"""Spectral (virtual monoenergetic) CT markers.

Paper 002 (papers/002_d8ba87fc522cbbc2.txt, Methods "DECT and perfusion quantitative analysis"):
the ROIs drawn on the arterial-phase image are copied onto the 40 keV and 90 keV virtual
monochromatic images; lambda_HU = (CT_40keV - CT_90keV) / (90 - 40).
"""

from __future__ import annotations

import numpy as np

LOW_KEV = 40.0
HIGH_KEV = 90.0


def lambda_hu(hu_40kev: float, hu_90kev: float) -> float:
    """Slope of the spectral HU curve in HU/keV: (HU at 40 keV - HU at 90 keV) / 50 keV."""
    if not (np.isfinite(hu_40kev) and np.isfinite(hu_90kev)):
        raise ValueError(f"non-finite attenuation: 40 keV {hu_40kev}, 90 keV {hu_90kev}")
    return (float(hu_40kev) - float(hu_90kev)) / (HIGH_KEV - LOW_KEV)
