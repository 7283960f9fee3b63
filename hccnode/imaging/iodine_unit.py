"""The stored unit of a dual-energy CT iodine map, and the evidence for it.

Papers 000 and 002 read iodine concentration (IC) in mg/mL on the vendors' iodine maps (000: Siemens
syngo.via "Liver VNC"; 002: GE AW 4.7 "IC maps") and use it normalised to the aorta: NIC =
IC_lesion / IC_aorta (hccnode.imaging.nic). How a map stores its values differs: mg/mL, 0.1 mg/mL
(100 ug/mL), ug/mL, with a Rescale Slope or a Real World Value Mapping. Paper 002 itself shows why
the unit must be checked: its Table 3 gives IC-AP 21.22 "mg/mL" with NIC-AP 17.40 % and IC-PVP
20.84 "mg/mL" with NIC-PVP 44.89 %, which puts the aorta near 21.22 / 0.174 = 122 and
20.84 / 0.449 = 46 "mg/mL": not blood values in mg/mL (see AORTA_MG_ML), but 12 and 4.6 mg/mL if
the numbers are in 0.1 mg/mL (this module's reading of the table, not the paper's statement).

The unit is taken, in order, from
1. the map's Real World Value Mapping (0040,9096) with a UCUM concentration unit (UNIT_TO_MG_ML)
   and its slope and intercept (hccnode.imaging.unit_evidence.rwvm_unit);
2. Rescale Type (0028,1054) MGML, "mg/ml" in PS3.3 Table C.11-1 (Modality LUT and Rescale Type
   defined terms; the Multi-energy CT Image module, Supplement 188): the modality values themselves
   are mg/mL;
3. a vendor convention of hccnode/data/iodine_units.toml (each entry cites its source; the file
   says which vendors are left out and why).
Each claim is checked against the aortic blood on the map (`decide`): a claim under which the aorta
reads outside the band of its phase, while another candidate scale (x10, x1000) puts it inside,
is refused, naming the conflict. Without a claim the unit is unknown: absolute iodine is not
reported. NIC is reported either way: a ratio of two values of one map is unit-free as long as the
map's values are proportional to iodine (0 = no iodine), which DECT material decomposition gives
(water/fat ~0 mg/mL) and which a header's intercept, when it states one, is applied for.

Aortic blood on an iodine map (AORTA_MG_ML, mg I/mL; the bands are this module's judgement from
these sources, wide enough to hold the phase, narrower than the factor 10 between candidate scales
for the venous phases):
- portal venous / equilibrium: a few mg/mL. Yel et al., "Standardization of Dual-Energy CT Iodine
  Uptake of the Abdomen and Pelvis: Defining Reference Values in a Big Data Cohort", Diagnostics
  2024;14(18):2051 (doi:10.3390/diagnostics14182051), 597 portal-venous DECT scans: organ iodine
  0.31-6.08 mg/mL and aorta-normalised ratios 0.06-1.20, so the aorta near 6.08 / 1.20 = 5 mg/mL
  (this module's inference from the abstract; the aortic values themselves are not quoted). Band 1.5-10.
- arterial: up to ~15-20 mg/mL (issue 16; DECT phantom studies of cardiac/arterial protocols use
  inserts of 0-20 mg/mL: Koonce et al., Eur Radiol 2014;24(2):512-518, PMC4126413). Band 2-25.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from pydicom.dataset import Dataset

from hccnode.imaging import unit_evidence
from hccnode.imaging.unit_evidence import Convention, HeaderUnit, rwvm_unit

# UCUM unit of the values (lower case) -> mg/mL per unit.
UNIT_TO_MG_ML = {"mg/ml": 1.0, "mg/cm3": 1.0, "g/l": 1.0, "10*-1.mg/ml": 0.1, "10*2.ug/ml": 0.1,
                 "10*2.ug/cm3": 0.1, "ug/ml": 1e-3, "ug/cm3": 1e-3}
CANDIDATES = ("mg/ml", "10*-1.mg/ml", "ug/ml")  # the scales a claim is checked against
_ALIASES = {"mg/ml": "mg/ml", "mg/cm3": "mg/cm3", "0.1 mg/ml": "10*-1.mg/ml", "100 ug/ml": "10*2.ug/ml",
            "100 ug/cm3": "10*2.ug/cm3", "ug/ml": "ug/ml", "ug/cm3": "ug/cm3", "g/l": "g/l"}

# Aortic blood, mg I/mL, by phase of the iodine map (module docstring for the sources).
AORTA_MG_ML = {"arterial": (2.0, 25.0), "portal": (1.5, 10.0), "equilibrium": (1.5, 10.0)}

RWVM = "Real World Value Mapping"
RESCALE_TYPE = "Rescale Type MGML"
VENDOR = "vendor convention"
UNKNOWN = "unknown"


def label(unit: str) -> str:
    """A unit as people write it: '0.1 mg/mL'."""
    return {"mg/ml": "mg/mL", "mg/cm3": "mg/cm3 (= mg/mL)", "g/l": "g/L (= mg/mL)", "10*-1.mg/ml": "0.1 mg/mL",
            "10*2.ug/ml": "100 ug/mL (0.1 mg/mL)", "10*2.ug/cm3": "100 ug/cm3 (0.1 mg/mL)", "ug/ml": "ug/mL",
            "ug/cm3": "ug/cm3 (0.001 mg/mL)"}.get(unit, unit)


def known(code: str) -> str | None:
    """The key of UNIT_TO_MG_ML for a UCUM code (case-insensitive), or None."""
    c = str(code).strip().lower().replace("µ", "u")
    return c if c in UNIT_TO_MG_ML else None


def parse_unit(text: str) -> str:
    """A key of UNIT_TO_MG_ML from a UCUM code or a common spelling ('0.1 mg/mL'); ValueError if unknown."""
    t = " ".join(str(text).replace("µ", "u").split()).lower()
    found = known(t) or _ALIASES.get(t)
    if found is None:
        raise ValueError(f"{text!r} is not an iodine concentration unit; use one of {', '.join(sorted(_ALIASES))}")
    return found


def header_unit(ds: Dataset) -> HeaderUnit | None:
    """The unit the iodine map's header states: its Real World Value Mapping with a concentration
    unit, else Rescale Type MGML (PS3.3 Table C.11-1: the modality values are mg/ml), top level or
    in the enhanced image's Pixel Value Transformation. None when neither says."""
    found = rwvm_unit(ds, known)
    if found is not None:
        return found
    types = [ds.get("RescaleType")]
    for group in list(ds.get("SharedFunctionalGroupsSequence") or []) + \
            list(ds.get("PerFrameFunctionalGroupsSequence") or [])[:1]:
        types += [t.get("RescaleType") for t in group.get("PixelValueTransformationSequence") or []]
    if any(str(t or "").strip().upper() == "MGML" for t in types):
        return HeaderUnit("mg/ml", source=RESCALE_TYPE)
    return None


@lru_cache(maxsize=1)
def conventions() -> tuple[Convention, ...]:
    """The packaged vendor conventions (hccnode/data/iodine_units.toml)."""
    text = resources.files("hccnode").joinpath("data/iodine_units.toml").read_text(encoding="utf-8")
    return tuple(unit_evidence.parse_conventions(text, parse_unit, "iodine_units"))


def find_convention(manufacturer: str, model: str = "", software: str = "",
                    table: tuple[Convention, ...] | None = None) -> Convention | None:
    return unit_evidence.find_convention(conventions() if table is None else table, manufacturer, model, software)


@dataclass(frozen=True)
class Decision:
    """How an iodine map's values are read: linear = volume value * slope + intercept (the header's
    mapping), mg/mL = linear * UNIT_TO_MG_ML[unit] when `unit` is set. `unit` None: absolute iodine
    is not reported (`text` says why), NIC still is, from the linear values (proportional to
    iodine). `text` is the provenance."""

    unit: str | None
    basis: str
    text: str
    slope: float = 1.0
    intercept: float = 0.0

    def linear(self, value: float) -> float:
        """A volume value on a scale proportional to iodine (the header's mapping applied)."""
        return value * self.slope + self.intercept

    def mg_ml(self, linear: float) -> float | None:
        """A value of the linear scale (`linear`) in mg/mL, or None when the unit is not known."""
        return None if self.unit is None else linear * UNIT_TO_MG_ML[self.unit]

    @property
    def nic_note(self) -> str:
        """What a NIC on this map rests on."""
        if self.unit is not None:
            return f"iodine map read in {label(self.unit)}: {self.text}"
        return (f"NIC is a ratio of two values of the same map, unit-free when its values are proportional to "
                f"iodine; absolute iodine not reported: {self.text}")


def aorta_band(phase: str) -> tuple[float, float] | None:
    return AORTA_MG_ML.get(phase)


def decide(manufacturer: str, phase: str, aorta_value: float | None, header: HeaderUnit | None = None,
           convention: Convention | None = None) -> Decision:
    """The unit of an iodine map of contrast `phase` from its header (Real World Value Mapping or
    Rescale Type MGML) or else a vendor `convention`, checked against the mean aortic value on the
    map (`aorta_value`, a volume value; None when there is no aorta ROI). Refused (unit None) when
    nothing states it, or when the aorta under the claim is outside its phase's band while another
    candidate scale puts it inside (a map stored x10 or x1000); the claim stands, said, when the
    aorta fits no candidate or cannot be checked."""
    who = f"'{manufacturer}'" if manufacturer else "(no Manufacturer in the header)"
    if header is not None:
        claim, slope, intercept = header.unit, header.slope, header.intercept
        basis, what = (RWVM, f"map's {RWVM}") if header.source != RESCALE_TYPE else \
            (RESCALE_TYPE, "map's Rescale Type MGML (PS3.3 Table C.11-1: mg/ml)")
    elif convention is not None:
        claim, slope, intercept = convention.unit, 1.0, 0.0
        basis, what = VENDOR, f"{VENDOR} for {who} ({convention.source})"
    else:
        return Decision(None, UNKNOWN, (
            f"the iodine map does not state its unit (no {RWVM} with a concentration unit, Rescale Type not MGML) "
            f"and no cited vendor convention is known for {who} (hccnode/data/iodine_units.toml)"))
    band = aorta_band(phase)
    if aorta_value is None or band is None:
        why = "no aorta ROI on the map" if aorta_value is None else f"no aortic band known for the {phase} phase"
        return Decision(claim, basis, f"{label(claim)} from the {what}; not checked against the aorta ({why})",
                        slope, intercept)
    linear = aorta_value * slope + intercept
    lo, hi = band

    def reads(unit: str) -> float:
        return linear * UNIT_TO_MG_ML[unit]

    def fits(unit: str) -> bool:
        return lo <= reads(unit) <= hi

    expected = f"aortic blood at {lo:g}-{hi:g} mg/mL expected in the {phase} phase"
    if fits(claim):
        return Decision(claim, basis, (f"{label(claim)} from the {what}; confirmed by the aorta "
                                       f"({reads(claim):.2f} mg/mL, {expected})"), slope, intercept)
    others = [u for u in CANDIDATES if UNIT_TO_MG_ML[u] != UNIT_TO_MG_ML[claim] and fits(u)]
    if others:
        alt = " or ".join(f"{label(u)} ({reads(u):.3g} mg/mL)" for u in others)
        return Decision(None, basis, (
            f"conflicting evidence on the iodine map's unit: the {what} says {label(claim)}, but the aorta then reads "
            f"{reads(claim):.3g} mg/mL ({expected}); it fits {alt}"), slope, intercept)
    return Decision(claim, basis, (
        f"{label(claim)} from the {what}; the aorta ({reads(claim):.3g} mg/mL) fits no candidate scale "
        f"({expected}), so it neither confirms nor contradicts it"), slope, intercept)


def decide_for(ds: Dataset, phase: str, aorta_value: float | None) -> Decision:
    """`decide` for the iodine map whose first header is `ds`."""
    manufacturer = str(ds.get("Manufacturer", "") or "").strip()
    convention = find_convention(manufacturer, str(ds.get("ManufacturerModelName", "") or ""),
                                 str(ds.get("SoftwareVersions", "") or ""))
    return decide(manufacturer, phase, aorta_value, header_unit(ds), convention)
