"""What to generate: `StudySpec` (all options, with defaults a node meets every day)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from hccnode.phantom.anatomy import Motion

KINDS = ("cect", "dect", "mr")
COMPRESSIONS = ("none", "rle", "jpeg2000", "jpegls")
HEADER_FAULTS = ("no_description", "no_contrast", "no_times", "shuffled_times")
ENHANCED_PHASES = ("arterial", "portal", "equilibrium")


class SpecError(ValueError):
    """An impossible or inconsistent phantom specification (message names the field)."""


@dataclass
class StudySpec:
    """One synthetic patient's imaging.

    kind: "cect" (unenhanced + arterial + portal + equilibrium CT), "dect" (the same, plus per
    enhanced phase an iodine map, virtual monoenergetic images and a virtual unenhanced image),
    "mr" (T2-weighted, DWI and ADC map at baseline and follow-up).
    Distances in mm, times in seconds, ADC in 10⁻⁶ mm²/s, noise σ in HU (CT) or signal units (MR).
    """

    kind: str = "cect"
    vendor: str = "siemens"
    seed: int = 1
    slices: int = 16
    matrix: int = 96
    pixel_spacing_mm: float | None = None      # default: 380 mm field of view / matrix
    slice_thickness_mm: float = 5.0
    slice_spacing_mm: float | None = None      # default: = slice thickness (contiguous)
    noise_sd: float = 10.0
    hct: float = 0.40
    liver_ecv: float = 0.29
    tumor_ecv: float = 0.35
    tumor_diameters_mm: tuple[float, ...] = (40.0,)
    tumor_arterial_fill: float = 0.4            # non-equilibrium fill (see enhancement.py)
    tumor_portal_fill: float = 0.75
    vessels: bool = True
    arterial_delay_s: float = 35.0
    portal_delay_s: float = 70.0
    equilibrium_delay_s: float = 180.0
    dect_phases: tuple[str, ...] = ENHANCED_PHASES
    vmi_kev: tuple[float, ...] = (40.0, 90.0)
    vnc: bool = True
    # MR (paper 003: b 50/800, T2 SIR and ADC at baseline and 8 weeks)
    b_values: tuple[float, ...] = (50.0, 800.0)
    followup_weeks: int = 8
    tumor_t2_ratio: tuple[float, float] = (1.9, 1.4)        # baseline, follow-up
    tumor_adc: tuple[float, float] = (1050.0, 1250.0)       # 10⁻⁶ mm²/s, baseline, follow-up
    followup_diameter_factor: float = 0.8
    # cases a real node meets
    motion: dict[str, Motion] = field(default_factory=dict)  # series phase / "followup" -> rigid move
    header_faults: tuple[str, ...] = ()
    enhanced: bool = False                     # CT as one multi-frame Enhanced CT instance per series
    compression: str = "none"
    split: bool = False                        # write the study as two sends (send1/, send2/)
    seg_phase: str | None = None               # phase of a reader's SEG annotation (None: no SEG)
    progress: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> SpecError:
            return SpecError(f"{name}: {why}")

        from hccnode.phantom.vendors import styles

        if self.vendor not in styles():
            raise bad("vendor", f"{self.vendor!r} is not one of {', '.join(sorted(styles()))}")
        if self.kind not in KINDS:
            raise bad("kind", f"{self.kind!r} is not one of {', '.join(KINDS)}")
        if self.compression not in COMPRESSIONS:
            raise bad("compression", f"{self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        for f in self.header_faults:
            if f not in HEADER_FAULTS:
                raise bad("header_faults", f"{f!r} is not one of {', '.join(HEADER_FAULTS)}")
        if not 1 <= self.slices <= 2000:
            raise bad("slices", "must be 1..2000")
        if not 16 <= self.matrix <= 1024:
            raise bad("matrix", "must be 16..1024")
        if not 0.0 < self.hct < 1.0:
            raise bad("hct", "must be a fraction between 0 and 1")
        for name in ("liver_ecv", "tumor_ecv", "tumor_arterial_fill", "tumor_portal_fill"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "must be a fraction between 0 and 1")
        if not self.tumor_diameters_mm or any(d <= 0 for d in self.tumor_diameters_mm):
            raise bad("tumor_diameters_mm", "need at least one positive diameter")
        if not 0 < self.arterial_delay_s < self.portal_delay_s < self.equilibrium_delay_s:
            raise bad("delays", "need 0 < arterial < portal < equilibrium")
        for p in self.dect_phases:
            if p not in ENHANCED_PHASES:
                raise bad("dect_phases", f"{p!r} is not one of {', '.join(ENHANCED_PHASES)}")
        for k in self.vmi_kev:
            if not 40.0 <= k <= 100.0:
                raise bad("vmi_kev", f"{k} outside 40..100 keV")
        if len(self.b_values) < 2 or len(set(self.b_values)) != len(self.b_values):
            raise bad("b_values", "need at least two different b-values")
        if self.noise_sd < 0:
            raise bad("noise_sd", "must be >= 0")
        if self.seg_phase is not None and self.seg_phase not in self.phases():
            raise bad("seg_phase", f"{self.seg_phase!r} is not one of {', '.join(self.phases())}")
        for key in self.motion:
            if key not in self.phases() + ("followup",):
                raise bad("motion", f"{key!r} is not a phase of this study")

    @property
    def spacing(self) -> float:
        return self.slice_spacing_mm or self.slice_thickness_mm

    @property
    def pixel_mm(self) -> float:
        return self.pixel_spacing_mm or round(380.0 / self.matrix, 4)

    def phases(self) -> tuple[str, ...]:
        if self.kind == "mr":
            return ("t2", "dwi", "adc")
        return ("unenhanced",) + ENHANCED_PHASES

    def delay(self, phase: str) -> float | None:
        return {"arterial": self.arterial_delay_s, "portal": self.portal_delay_s,
                "equilibrium": self.equilibrium_delay_s}.get(phase)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["motion"] = {k: asdict(m) for k, m in self.motion.items()}
        return d
