"""Systemic inflammation and nutrition indices from blood counts and chemistry.

Definitions: paper 003 (003_12b417b4b575f485.txt), Materials and methods, "Clinical data":
  NLR = neutrophils / lymphocytes
  LMR = lymphocytes / monocytes
  AAPR = albumin / alkaline phosphatase
  SIRI = (neutrophils x monocytes) / lymphocytes
  PIV = (platelets x neutrophils x monocytes) / lymphocytes
  SII = (platelets x neutrophils) / lymphocytes
Paper 004 (004_7254fb3d7dd0fb7a.txt), Methods, "Serology indexes", uses NLR from the absolute
neutrophil and lymphocyte counts (ANC / ALC) with the same definition (cut-off NLR > 3).

Units: paper 003 does not print the units of its counts or chemistry. Cell counts here are
absolute counts in 10^9/L (the unit paper 000 Table 1 gives for NEU and LYM); the ratios NLR and
LMR do not depend on it, SIRI, PIV and SII do (SIRI in 10^9/L, SII in 10^9/L, PIV in
(10^9/L)^2). AAPR takes albumin in g/L and ALP in U/L, the units of the original AAPR
definition; paper 003's reported medians (ALP 137) and cut-off (AAPR 0.33) are of that order,
but the paper does not state them, so results are reported with these units named.
All inputs must come from one blood draw (see `matching.match_panel`).
"""

from __future__ import annotations

INPUTS = {
    "nlr": ("neutrophils", "lymphocytes"),
    "lmr": ("lymphocytes", "monocytes"),
    "aapr": ("albumin", "alp"),
    "siri": ("neutrophils", "monocytes", "lymphocytes"),
    "piv": ("platelets", "neutrophils", "monocytes", "lymphocytes"),
    "sii": ("platelets", "neutrophils", "lymphocytes"),
}
UNITS = {"nlr": "1", "lmr": "1", "aapr": "(g/L)/(U/L)", "siri": "10*9/L", "piv": "(10*9/L)2", "sii": "10*9/L"}


def _ratio(num: float, den: float, name: str) -> float:
    if den <= 0:
        raise ValueError(f"{name}: denominator must be positive, got {den:g}")
    return num / den


def nlr(neutrophils_1e9_per_l: float, lymphocytes_1e9_per_l: float) -> float:
    """Neutrophil-to-lymphocyte ratio (dimensionless). Paper 003 Clinical data; paper 004 Serology indexes."""
    return _ratio(neutrophils_1e9_per_l, lymphocytes_1e9_per_l, "NLR")


def lmr(lymphocytes_1e9_per_l: float, monocytes_1e9_per_l: float) -> float:
    """Lymphocyte-to-monocyte ratio (dimensionless). Paper 003 Clinical data."""
    return _ratio(lymphocytes_1e9_per_l, monocytes_1e9_per_l, "LMR")


def aapr(albumin_g_per_l: float, alp_u_per_l: float) -> float:
    """Albumin-to-alkaline-phosphatase ratio, (g/L)/(U/L). Paper 003 Clinical data."""
    return _ratio(albumin_g_per_l, alp_u_per_l, "AAPR")


def siri(neutrophils_1e9_per_l: float, monocytes_1e9_per_l: float, lymphocytes_1e9_per_l: float) -> float:
    """Systemic inflammation response index N x M / L, in 10^9/L. Paper 003 Clinical data."""
    return _ratio(neutrophils_1e9_per_l * monocytes_1e9_per_l, lymphocytes_1e9_per_l, "SIRI")


def piv(platelets_1e9_per_l: float, neutrophils_1e9_per_l: float, monocytes_1e9_per_l: float,
        lymphocytes_1e9_per_l: float) -> float:
    """Pan-immune-inflammation value P x N x M / L, in (10^9/L)^2. Paper 003 Clinical data."""
    return _ratio(platelets_1e9_per_l * neutrophils_1e9_per_l * monocytes_1e9_per_l, lymphocytes_1e9_per_l, "PIV")


def sii(platelets_1e9_per_l: float, neutrophils_1e9_per_l: float, lymphocytes_1e9_per_l: float) -> float:
    """Systemic immune-inflammation index P x N / L, in 10^9/L. Paper 003 Clinical data."""
    return _ratio(platelets_1e9_per_l * neutrophils_1e9_per_l, lymphocytes_1e9_per_l, "SII")


FUNCTIONS = {"nlr": nlr, "lmr": lmr, "aapr": aapr, "siri": siri, "piv": piv, "sii": sii}


def compute(name: str, values: dict[str, float]) -> float:
    """Index `name` from canonical-unit values keyed by test (neutrophils, lymphocytes, ...)."""
    return FUNCTIONS[name](*(values[t] for t in INPUTS[name]))
