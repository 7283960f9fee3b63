"""Tissue model of the phantom: attenuation by phase, iodine, spectral HU, T2 signal and ADC.

Contrast model (all values are the phantom's own, stated here so tests can rely on them):

* Plasma enhancement P(t) in HU at delay t after bolus start follows from the aortic (whole
  blood) curve `blood_enhancement_hu(t)`: blood holds contrast only in plasma, so
  ΔHU_blood = (1 − HCT) · P(t).
* Any tissue: ΔHU_tissue = ECV_tissue · P(t) · fill(phase). For blood ECV = 1 − HCT.
  `fill` is the documented non-equilibrium term: the fraction of the tissue's extracellular
  space that has reached plasma concentration. It is 1 for every tissue in the equilibrium
  phase, so there ECV = (1 − HCT) · ΔHU_tissue / ΔHU_aorta holds exactly (paper 001,
  001_c4ba0269da651d59.txt, "Image analysis"). Before equilibrium the liver lags (portal
  supply) and an HCC shows arterial hyperenhancement and portal washout.
* Iodine: ΔHU = IC · k(E) with k(E) = (μ/ρ)_iodine(E) / (μ/ρ)_water(E) in HU per mg/mL
  (ΔHU = 1000 · Δμ/μ_water and 1 mg/mL adds 10⁻³ g/cm³ of iodine; μ/ρ from the NIST X-ray mass
  attenuation tables, log-log interpolated; sources at _MU_IODINE below). Conventional (polychromatic)
  images are treated as 70 keV equivalent, so IC = ΔHU_conventional / k(70).
  Hence NIC = IC_tissue / IC_aorta and ECV = NIC · (1 − HCT) in equilibrium (paper 000).
* Virtual monoenergetic images: HU(E) = HU_unenhanced + IC · k(E); the base attenuation is
  taken as energy independent (a simplification of the phantom), so the virtual unenhanced
  image equals the true unenhanced image and λHU = IC · (k(40) − k(90)) / 50 (paper 002).
* MRI: T2 signal is given as a ratio to erector spinae (paper 003's T2 SIR); DWI follows
  S(b) = S0 · exp(−b · ADC) with ADC in 10⁻⁶ mm²/s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hccnode.phantom.anatomy import Label

PHASES = ("unenhanced", "arterial", "portal", "equilibrium")

# Total mass attenuation coefficients μ/ρ (cm²/g, with coherent scattering) from NIST Standard
# Reference Database 126 (Hubbell & Seltzer, NISTIR 5632; https://www.nist.gov/pml/x-ray-mass-attenuation-coefficients),
# at its own table nodes 40, 50, 60, 80, 100 keV:
#   iodine, ElemTab/z53.html: 22.10, 12.32, 7.579, 3.510, 1.942 (values as quoted from that page in
#     build_nai_mu_rho.py, a public GitHub file found by content; an earlier typed-from-memory 7.583 at
#     60 keV was wrong). The K edge lies at 33.1694 keV (6.553 -> 35.82 cm²/g), below this table, so no
#     interpolation here crosses it.
#   liquid water, ComTab/water.html: 0.2683, 0.2269, 0.2059, 0.1837, 0.1707 (the same numbers appear in
#     several independent public copies of that table labelled "NIST Standard Reference Database 126").
# 70 and 90 keV are not NIST nodes: they are log-log interpolated between the neighbouring nodes.
_KEV = np.array([40.0, 50.0, 60.0, 80.0, 100.0])
_MU_IODINE = np.array([22.10, 12.32, 7.579, 3.510, 1.942])
_MU_WATER = np.array([0.2683, 0.2269, 0.2059, 0.1837, 0.1707])
CONVENTIONAL_KEV = 70.0


def iodine_hu_per_mg_ml(kev: float) -> float:
    """HU added by 1 mg/mL iodine in water at `kev` (40–100 keV)."""
    if not 40.0 <= kev <= 100.0:
        raise ValueError(f"monoenergetic level {kev} keV outside the phantom's 40–100 keV table")
    le = np.log(kev)
    mu_i = np.exp(np.interp(le, np.log(_KEV), np.log(_MU_IODINE)))
    mu_w = np.exp(np.interp(le, np.log(_KEV), np.log(_MU_WATER)))
    return float(mu_i / mu_w)


def blood_enhancement_hu(t_s: float) -> float:
    """Aortic whole-blood enhancement (HU above unenhanced) at t_s seconds after bolus start.

    First pass: gamma-variate-like peak of 250 HU at 32 s (arrival at 10 s); recirculation
    plateau of up to 140 HU reached with a 25 s time constant and washing out over ~15 min.
    """
    if t_s <= 10.0:
        return 0.0
    x = (t_s - 10.0) / 22.0
    first_pass = 250.0 * (x * np.exp(1.0 - x)) ** 3
    plateau = 140.0 * (1.0 - np.exp(-(t_s - 10.0) / 25.0)) * np.exp(-(t_s - 10.0) / 900.0)
    return float(first_pass + plateau)


def plasma_enhancement_hu(t_s: float, hct: float) -> float:
    """Plasma enhancement P(t) = ΔHU_blood / (1 − HCT)."""
    return blood_enhancement_hu(t_s) / (1.0 - hct)


@dataclass(frozen=True)
class Tissue:
    name: str
    hu0: float                   # unenhanced attenuation, HU
    ecv: float | None            # extracellular volume fraction; None = blood (1 − HCT)
    fill_arterial: float         # non-equilibrium fill fraction in the arterial phase
    fill_portal: float           # ... in the portal venous phase (equilibrium is always 1)
    t2_ratio: float              # T2 signal relative to erector spinae
    adc: float                   # ADC, 10⁻⁶ mm²/s

    def fill(self, phase: str) -> float:
        return {"unenhanced": 0.0, "arterial": self.fill_arterial, "portal": self.fill_portal,
                "equilibrium": 1.0}[phase]


DEFAULT_TISSUES: dict[int, Tissue] = {
    Label.AIR: Tissue("air", -1000.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    Label.FAT: Tissue("fat", -100.0, 0.05, 0.5, 0.9, 0.4, 200.0),
    Label.LIVER: Tissue("liver", 55.0, 0.29, 0.15, 0.75, 1.4, 1100.0),
    Label.SPLEEN: Tissue("spleen", 45.0, 0.35, 0.6, 0.95, 2.6, 800.0),
    Label.AORTA: Tissue("aorta", 40.0, None, 1.0, 1.0, 0.3, 2500.0),
    Label.PORTAL_VEIN: Tissue("portal_vein", 40.0, None, 0.25, 1.0, 0.5, 2500.0),
    Label.HEPATIC_VEIN: Tissue("hepatic_vein", 40.0, None, 0.05, 0.8, 0.5, 2500.0),
    Label.VERTEBRA: Tissue("vertebra", 250.0, 0.10, 0.5, 0.9, 0.6, 500.0),
    Label.ERECTOR_SPINAE: Tissue("erector_spinae", 50.0, 0.15, 0.3, 0.8, 1.0, 1400.0),
    Label.TUMOR: Tissue("tumor", 40.0, 0.35, 0.4, 0.75, 1.9, 1050.0),
}


def tissue_table(hct: float, liver_ecv: float, tumors: list[Tissue]) -> dict[int, Tissue]:
    """Tissues by label for one patient: blood ECV = 1 − HCT, the given liver ECV, one entry per tumor."""
    table = {k: (replace(v, ecv=1.0 - hct) if v.ecv is None else v) for k, v in DEFAULT_TISSUES.items()
             if k != Label.TUMOR}
    table[Label.LIVER] = replace(table[Label.LIVER], ecv=liver_ecv)
    for i, t in enumerate(tumors):
        table[Label.TUMOR + i] = t
    return table


def enhancement_hu(tissue: Tissue, phase: str, delay_s: float, hct: float) -> float:
    """ΔHU of `tissue` in `phase` acquired `delay_s` after bolus start (0 when unenhanced)."""
    if phase == "unenhanced":
        return 0.0
    return tissue.ecv * plasma_enhancement_hu(delay_s, hct) * tissue.fill(phase)


def lookup(labels: np.ndarray, values: dict[int, float]) -> np.ndarray:
    """Map a label array to float32 values (unknown labels → first value, i.e. air)."""
    lut = np.zeros(max(values) + 1, dtype=np.float32)
    for k, v in values.items():
        lut[k] = v
    return lut[labels]
