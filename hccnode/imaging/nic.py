"""Normalized iodine concentration (NIC) from dual-energy CT iodine maps.

Paper 000 (papers/000_1e01a252ba479b1c.txt, Methods 2.2 "CT Examination"): equilibrium-phase
(2 min) iodine map; lesion iodine concentration = average of three ROIs on the lesion's largest
slice avoiding necrosis and vessels; aorta ("adjacent main artery") at the same level;
NIC = IC_lesion / IC_aorta, used as a ratio (ECV = NIC x (1 - HCT), ECV cutoff 0.45).

Paper 002 (papers/002_d8ba87fc522cbbc2.txt, Methods "DECT and perfusion quantitative analysis"):
arterial-phase (AP) iodine map; three circular ROIs of 10-20 mm^2 in the solid tumor on the
largest diameter, averaged; one aortic ROI on the same slice covering >= 50 % of the lumen;
NIC = IC_tumor / IC_aorta. The paper reports NIC-AP in percent (Table 5 "NIC-AP (%)", Fig. 2
"17.42%"), and its nomogram coefficient 0.143 applies to the percent value.
"""

from __future__ import annotations

import numpy as np


def nic_ratio(ic_lesion_mg_ml: float, ic_aorta_mg_ml: float) -> float:
    """NIC = IC_lesion / IC_aorta (dimensionless ratio). Paper 000, Methods 2.2.

    Both values from the same iodine map, in the same unit: mg/mL, or the map's own scale when its
    unit is unknown, the ratio being unit-free for values proportional to iodine
    (hccnode.imaging.iodine_unit decides which).
    """
    if not np.isfinite(ic_aorta_mg_ml) or ic_aorta_mg_ml <= 0:
        raise ValueError(f"aortic iodine concentration must be > 0 mg/mL, got {ic_aorta_mg_ml}")
    if not np.isfinite(ic_lesion_mg_ml):
        raise ValueError(f"lesion iodine concentration is not finite: {ic_lesion_mg_ml}")
    return float(ic_lesion_mg_ml) / float(ic_aorta_mg_ml)


def nic_ap_percent(ic_tumor_mg_ml: float, ic_aorta_mg_ml: float) -> float:
    """NIC-AP in percent = 100 x IC_tumor / IC_aorta, arterial-phase iodine map.
    Paper 002, Methods "DECT and perfusion quantitative analysis"; percent per its Table 5."""
    return 100.0 * nic_ratio(ic_tumor_mg_ml, ic_aorta_mg_ml)
