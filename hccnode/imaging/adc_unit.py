"""The stored unit of an ADC map, and the evidence for it.

Scanners store ADC maps as numbers whose unit the header often does not state: integers in
10^-6 mm^2/s (um2/s) are common, 10^-3 mm^2/s and mm^2/s exist. The unit is taken, in order, from
1. the map's Real World Value Mapping (0040,9096): UCUM unit in Measurement Units Code Sequence,
   with its slope and intercept;
2. the site's configuration for the Manufacturer ([adc] units in hccnode.toml);
3. a vendor convention of hccnode/data/adc_units.toml (each entry cites its source);
and 2. and 3. are checked against the values of the tissues in the map itself (`check_scales`):
a claim is refused, naming the conflict, when the tissue values fit another scale; when they fit
none (a map of mostly noise, too few voxels) the claim stands and the provenance says so. With none of the three, the
tissue values decide when exactly one candidate scale fits them; otherwise the map is not measured.

Tissue values used for the check (ADC in 10^-3 mm^2/s):
- Free water at body temperature is about 3.0 (BIDS specification, diffusion derivatives: "for
  free water in body temperature, this should be approximately 3" um2/ms; bids-standard/
  bids-specification pull request 205); room-temperature water is about 2.0-2.1. Nothing in a body
  diffuses faster than free water at 37 C, so FREE_WATER_MAX = 3.5 leaves 0.5 for fit noise.
- Soft tissue: median published values liver 1.28, spleen 0.85, kidney 1.94, pancreas 1.60,
  gallbladder 2.73 (Jafar et al., World J Radiol 2016;8(1):21-49, PMC4731347); liver and muscle
  0.8-1.8 (issue 15). SOFT_TISSUE = 0.6-2.0 holds liver, spleen, muscle and kidney.
- Candidate scales 10^-6, 10^-5, 10^-3 and 1 mm^2/s differ by a factor of 10 or more, wider than
  the whole soft-tissue band (2.0 / 0.6 = 3.3): real body tissue fits at most one of them.
The shares (MIN_SOFT_SHARE, MAX_OVER_SHARE) are this module's judgement, not published numbers:
the organs of the upper abdomen are a large part of any liver MR slice, and a map read at the
wrong scale puts nearly all tissue beyond free water or nearly none in the soft-tissue band.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
from pydicom.dataset import Dataset

from hccnode.imaging import unit_evidence
from hccnode.imaging.unit_evidence import Convention, HeaderUnit, rwvm_unit

# UCUM unit of the stored values -> mm^2/s per stored unit.
UNIT_TO_MM2S = {"mm2/s": 1.0, "10*-3.mm2/s": 1e-3, "10*-5.mm2/s": 1e-5, "10*-6.mm2/s": 1e-6, "um2/s": 1e-6}
CANDIDATES = ("10*-6.mm2/s", "10*-5.mm2/s", "10*-3.mm2/s", "mm2/s")
# Spellings a site may write in its configuration, besides the UCUM codes.
_ALIASES = {"1e-6 mm2/s": "10*-6.mm2/s", "1e-5 mm2/s": "10*-5.mm2/s", "1e-3 mm2/s": "10*-3.mm2/s",
            "1 mm2/s": "mm2/s", "10^-6 mm2/s": "10*-6.mm2/s", "10^-5 mm2/s": "10*-5.mm2/s",
            "10^-3 mm2/s": "10*-3.mm2/s", "um2/s": "um2/s", "mm2/s": "mm2/s"}

SOFT_TISSUE = (0.6, 2.0)     # 10^-3 mm^2/s: liver, spleen, muscle, kidney (see module docstring)
FREE_WATER_MAX = 3.5         # 10^-3 mm^2/s: free water at 37 C (3.0) plus fit noise
MIN_SOFT_SHARE = 0.20        # of body voxels at soft-tissue values
MAX_OVER_SHARE = 0.10        # of body voxels beyond free water
MIN_VOXELS = 500             # body voxels needed to judge a scale at all

RWVM = "Real World Value Mapping"
SITE = "site configuration"
VENDOR = "vendor convention"
TISSUE = "tissue values"


def label(unit: str) -> str:
    """A unit as people write it: '10^-6 mm2/s'."""
    return {"10*-3.mm2/s": "10^-3 mm2/s", "10*-5.mm2/s": "10^-5 mm2/s", "10*-6.mm2/s": "10^-6 mm2/s",
            "um2/s": "um2/s (10^-6 mm2/s)"}.get(unit, unit)


def parse_unit(text: str) -> str:
    """A UCUM code of UNIT_TO_MM2S from a code or a common spelling ('1e-6 mm2/s'); ValueError if unknown."""
    t = " ".join(str(text).replace("²", "2").replace("^2", "2").split()).lower()
    if t in UNIT_TO_MM2S:
        return t
    if t in _ALIASES:
        return _ALIASES[t]
    raise ValueError(f"{text!r} is not an ADC unit; use one of {', '.join(sorted(_ALIASES))}")


def same_scale(a: str, b: str) -> bool:
    return UNIT_TO_MM2S[a] == UNIT_TO_MM2S[b]


def header_unit(ds: Dataset) -> HeaderUnit | None:
    """The ADC unit stated by the map's Real World Value Mapping (top level or, for an enhanced
    image, the shared or the first frame's functional groups), if it is one of UNIT_TO_MM2S, with
    its linear mapping (hccnode.imaging.unit_evidence.rwvm_unit)."""
    return rwvm_unit(ds, lambda code: code if code in UNIT_TO_MM2S else None)


@dataclass(frozen=True)
class ScaleCheck:
    """How the body voxels of a map look when its values are read in `unit`."""

    unit: str
    voxels: int           # body voxels (finite, > 0)
    soft_share: float     # share at soft-tissue values (SOFT_TISSUE)
    over_share: float     # share beyond free water (FREE_WATER_MAX)
    median: float         # median of the body voxels, 10^-3 mm^2/s

    @property
    def consistent(self) -> bool | None:
        """True when the values look like a body at this scale, False when they do not, None
        when there are too few body voxels to tell."""
        if self.voxels < MIN_VOXELS:
            return None
        return self.soft_share >= MIN_SOFT_SHARE and self.over_share <= MAX_OVER_SHARE

    def describe(self) -> str:
        if self.voxels < MIN_VOXELS:
            return f"only {self.voxels} voxels with an ADC value (at least {MIN_VOXELS} needed to check)"
        return (f"read as {label(self.unit)}: median {self.median:.3g} x10^-3 mm2/s, "
                f"{self.soft_share:.0%} of {self.voxels} voxels at liver/spleen/muscle values "
                f"({SOFT_TISSUE[0]}-{SOFT_TISSUE[1]} x10^-3 mm2/s), {self.over_share:.0%} beyond free water "
                f"({FREE_WATER_MAX} x10^-3 mm2/s)")


def check_scales(values: np.ndarray, units: tuple[str, ...] = CANDIDATES) -> dict[str, ScaleCheck]:
    """How the map's body voxels (finite values > 0; background is 0) look at each candidate unit.
    A map holds body tissue at one scale: soft tissue (liver, spleen, muscle) in SOFT_TISSUE, and
    nothing faster than free water at 37 C (module docstring for the sources)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    n = int(v.size)
    median_stored = float(np.median(v)) if n else 0.0
    out = {}
    for unit in units:
        to_1e3 = UNIT_TO_MM2S[unit] * 1e3
        lo, hi = SOFT_TISSUE[0] / to_1e3, SOFT_TISSUE[1] / to_1e3
        soft = int(np.count_nonzero((v >= lo) & (v <= hi)))
        over = int(np.count_nonzero(v > FREE_WATER_MAX / to_1e3))
        out[unit] = ScaleCheck(unit, n, soft / n if n else 0.0, over / n if n else 0.0, median_stored * to_1e3)
    return out


def parse_conventions(text: str) -> list[Convention]:
    """The conventions of a TOML text in the format of hccnode/data/adc_units.toml. ValueError,
    naming the entry, for an entry without a manufacturer, a known unit or a source."""
    return unit_evidence.parse_conventions(text, parse_unit, "adc_units")


@lru_cache(maxsize=1)
def conventions() -> tuple[Convention, ...]:
    """The packaged vendor conventions (hccnode/data/adc_units.toml)."""
    text = resources.files("hccnode").joinpath("data/adc_units.toml").read_text(encoding="utf-8")
    return tuple(parse_conventions(text))


def find_convention(manufacturer: str, model: str = "", software: str = "",
                    table: tuple[Convention, ...] | None = None) -> Convention | None:
    return unit_evidence.find_convention(conventions() if table is None else table, manufacturer, model, software)


def site_unit(manufacturer: str, units: dict[str, str]) -> str | None:
    """The unit a site configured for this Manufacturer (names compared case-insensitively)."""
    key = " ".join((manufacturer or "").split()).lower()
    for name, unit in units.items():
        if " ".join(name.split()).lower() == key:
            return parse_unit(unit)
    return None


@dataclass(frozen=True)
class UnitDecision:
    """Which unit an ADC map's values are read in (`unit`, None when refused) and why (`text`:
    the provenance when taken, the reason when refused)."""

    unit: str | None
    basis: str
    text: str


def decide(manufacturer: str, checks: dict[str, ScaleCheck], header: str | None = None,
           site: str | None = None, convention: Convention | None = None) -> UnitDecision:
    """The unit of an ADC map's values from, in order, its Real World Value Mapping (`header`),
    the site's configuration (`site`) and a vendor `convention`, each but the first checked against
    the tissue values (`checks`, from check_scales); without any, from the tissue values alone
    when exactly one candidate scale fits them. Refused (unit None) only when the evidence
    conflicts (a claimed scale the tissue values do not fit while they fit another) or nothing
    decides, with the reason."""
    who = f"'{manufacturer}'" if manufacturer else "(no Manufacturer in the header)"
    fitting = [u for u in CANDIDATES if checks[u].consistent]
    if header is not None:
        tissue = _tissue_note(header, checks, fitting)
        return UnitDecision(header, RWVM, f"{label(header)} from the map's {RWVM}; {tissue}")
    for claim, basis, what in ((site, SITE, f"{SITE} for Manufacturer {who} ([adc] units)"),
                               (convention.unit if convention else None, VENDOR,
                                f"{VENDOR} for {who} ({convention.source if convention else ''})")):
        if claim is None:
            continue
        check = next(c for u, c in checks.items() if same_scale(u, claim))
        if check.consistent is False and fitting:
            return UnitDecision(None, basis, (
                f"conflicting evidence on the ADC map's unit: the {what} says {label(claim)}, but the tissue "
                f"values contradict it ({check.describe()}; they fit {' and '.join(label(u) for u in fitting)})"))
        return UnitDecision(claim, basis, f"{label(claim)} from the {what}; {_tissue_note(claim, checks, fitting)}")
    if len(fitting) == 1:
        return UnitDecision(fitting[0], TISSUE, (
            f"{label(fitting[0])} from the {TISSUE} alone (no {RWVM}, no {SITE} or {VENDOR} for {who}): "
            f"{checks[fitting[0]].describe()}"))
    why = ("no candidate scale fits them" if not fitting else
           f"they fit {' and '.join(label(u) for u in fitting)}")
    detail = checks[CANDIDATES[0]].describe()
    return UnitDecision(None, TISSUE, (
        f"the ADC map does not state its unit (no {RWVM}), no {SITE} or {VENDOR} is known for {who}, "
        f"and the {TISSUE} do not decide it: {why} ({detail})"))


def _tissue_note(unit: str, checks: dict[str, ScaleCheck], fitting: list[str]) -> str:
    check = next(c for u, c in checks.items() if same_scale(u, unit))
    if check.consistent:
        return f"confirmed by {TISSUE} ({check.describe()})"
    if check.consistent is None:
        return f"not checked against {TISSUE}: {check.describe()}"
    if fitting:
        return f"{TISSUE} do not fit it ({check.describe()}; they fit {' and '.join(label(u) for u in fitting)})"
    return f"{TISSUE} fit none of the candidate scales, so they neither confirm nor contradict it ({check.describe()})"
