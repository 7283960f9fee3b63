"""`hccnode phantom`: write a synthetic liver study with known truth (thin shell over `generate`)."""

from __future__ import annotations

import argparse
import sys

from hccnode.phantom import vendors
from hccnode.phantom.anatomy import Motion
from hccnode.phantom.spec import COMPRESSIONS, HEADER_FAULTS, KINDS, SpecError, StudySpec


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _pair(text: str) -> tuple[float, float]:
    v = _floats(text)
    if len(v) != 2:
        raise argparse.ArgumentTypeError(f"expected BASELINE,FOLLOWUP, got {text!r}")
    return v


def _motion(text: str) -> tuple[str, Motion]:
    """PHASE:DX,DY,DZ[:DEG] -> (phase, Motion)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"expected PHASE:DX,DY,DZ[:DEG], got {text!r}")
    shift = _floats(parts[1])
    if len(shift) != 3:
        raise argparse.ArgumentTypeError(f"shift needs three values in mm, got {parts[1]!r}")
    deg = float(parts[2]) if len(parts) == 3 else 0.0
    return parts[0], Motion(shift, deg)


def register(sub) -> None:
    d = StudySpec()
    p = sub.add_parser(
        "phantom", help="write a synthetic liver study (DICOM + truth.json) with known ECV, iodine, ADC, T2 ratio",
        description="Write a synthetic abdomen (liver, tumor(s), aorta, spine, erector spinae, spleen) as real "
                    "DICOM, with the true values in OUT_DIR/truth.json. Tissue enhancement = ECV x plasma "
                    "enhancement (x a fill fraction before equilibrium); aorta = (1 - HCT) x plasma. "
                    "Synthetic data, no patient; research use only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", help="output folder (created)")
    p.add_argument("--kind", choices=KINDS, default=d.kind,
                   help="cect: unenhanced/arterial/portal/equilibrium CT; dect: plus iodine map, VMIs and VNC per "
                        "enhanced phase; mr: T2, DWI and ADC at baseline and follow-up")
    p.add_argument("--vendor", choices=sorted(vendors.styles()), default=d.vendor,
                   help="labelling style (series descriptions, ImageType, rescale, private b-value tags)")
    p.add_argument("--seed", type=int, default=d.seed, help="same seed, same pixels and UIDs")
    p.add_argument("--slices", type=int, default=d.slices, help="number of axial slices")
    p.add_argument("--matrix", type=int, default=d.matrix, help="rows = columns")
    p.add_argument("--pixel-spacing", type=float, default=None, help="mm (default 380 mm FOV / matrix)")
    p.add_argument("--thickness", type=float, default=d.slice_thickness_mm, help="slice thickness, mm")
    p.add_argument("--spacing", type=float, default=None, help="slice spacing, mm (default = thickness)")
    p.add_argument("--noise", type=float, default=d.noise_sd, help="Gaussian noise sigma (HU for CT, signal for MR)")
    p.add_argument("--hct", type=float, default=d.hct, help="hematocrit, fraction")
    p.add_argument("--liver-ecv", type=float, default=d.liver_ecv, help="true liver ECV, fraction")
    p.add_argument("--tumor-ecv", type=float, default=d.tumor_ecv, help="true tumor ECV, fraction")
    p.add_argument("--tumor-mm", type=_floats, default=d.tumor_diameters_mm,
                   help="tumor diameter(s) in mm, comma-separated (up to 4 tumors)")
    p.add_argument("--tumor-arterial-fill", type=float, default=d.tumor_arterial_fill,
                   help="tumor non-equilibrium fill fraction in the arterial phase")
    p.add_argument("--tumor-portal-fill", type=float, default=d.tumor_portal_fill,
                   help="tumor non-equilibrium fill fraction in the portal phase")
    p.add_argument("--no-vessels", action="store_true", help="omit portal and hepatic veins")
    p.add_argument("--arterial-delay", type=float, default=d.arterial_delay_s, help="s after bolus start")
    p.add_argument("--portal-delay", type=float, default=d.portal_delay_s, help="s after bolus start")
    p.add_argument("--equilibrium-delay", type=float, default=d.equilibrium_delay_s, help="s after bolus start")
    p.add_argument("--dect-phases", type=lambda s: tuple(s.split(",")), default=d.dect_phases,
                   help="enhanced phases that get dual-energy series (dect)")
    p.add_argument("--kev", type=_floats, default=d.vmi_kev, help="virtual monoenergetic levels, keV (dect)")
    p.add_argument("--no-vnc", action="store_true", help="omit the virtual unenhanced series (dect)")
    p.add_argument("--b-values", type=_floats, default=d.b_values, help="DWI b-values, s/mm2 (mr)")
    p.add_argument("--t2-ratio", type=_pair, default=d.tumor_t2_ratio,
                   help="tumor / erector spinae T2 signal ratio at BASELINE,FOLLOWUP (mr)")
    p.add_argument("--adc", type=_pair, default=d.tumor_adc, help="tumor ADC, 1e-6 mm2/s, BASELINE,FOLLOWUP (mr)")
    p.add_argument("--followup-weeks", type=int, default=d.followup_weeks, help="weeks to the follow-up (mr)")
    p.add_argument("--followup-size", type=float, default=d.followup_diameter_factor,
                   help="follow-up tumor diameter / baseline diameter (mr)")
    p.add_argument("--move", type=_motion, action="append", default=[], metavar="PHASE:DX,DY,DZ[:DEG]",
                   help="misregister a phase (or 'followup'): shift in mm, rotation about z in degrees; repeatable")
    p.add_argument("--fault", choices=HEADER_FAULTS, action="append", default=[],
                   help="damage headers as real studies are: drop SeriesDescription, contrast tags or times, or "
                        "shuffle acquisition times between enhanced phases; repeatable")
    p.add_argument("--enhanced", action="store_true", help="CT as multi-frame Enhanced CT Image Storage")
    p.add_argument("--compression", choices=COMPRESSIONS, default=d.compression, help="lossless transfer syntax")
    p.add_argument("--split", action="store_true", help="write the study as two sends (send1/, send2/)")
    p.add_argument("--seg", metavar="PHASE", default=None,
                   help="also write a reader's DICOM SEG (tumor, liver, aorta, erector spinae) on this phase")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def spec_from_args(args) -> StudySpec:
    return StudySpec(
        kind=args.kind, vendor=args.vendor, seed=args.seed, slices=args.slices, matrix=args.matrix,
        pixel_spacing_mm=args.pixel_spacing, slice_thickness_mm=args.thickness, slice_spacing_mm=args.spacing,
        noise_sd=args.noise, hct=args.hct, liver_ecv=args.liver_ecv, tumor_ecv=args.tumor_ecv,
        tumor_diameters_mm=args.tumor_mm, tumor_arterial_fill=args.tumor_arterial_fill,
        tumor_portal_fill=args.tumor_portal_fill, vessels=not args.no_vessels,
        arterial_delay_s=args.arterial_delay, portal_delay_s=args.portal_delay,
        equilibrium_delay_s=args.equilibrium_delay, dect_phases=args.dect_phases, vmi_kev=args.kev,
        vnc=not args.no_vnc, b_values=args.b_values, tumor_t2_ratio=args.t2_ratio, tumor_adc=args.adc,
        followup_weeks=args.followup_weeks, followup_diameter_factor=args.followup_size,
        motion=dict(args.move), header_faults=tuple(args.fault), enhanced=args.enhanced,
        compression=args.compression, split=args.split, seg_phase=args.seg, progress=not args.no_progress)


def run(args) -> int:
    from hccnode.cli import UsageError
    from hccnode.phantom.generate import generate

    try:
        spec = spec_from_args(args)
        truth = generate(spec, args.out_dir)
    except SpecError as exc:
        raise UsageError(str(exc)) from None
    n = sum(len(s["series"]) for s in truth.data["studies"])
    print(f"wrote {n} series in {len(truth.data['studies'])} study(ies) to {args.out_dir} (truth.json)",
          file=sys.stderr)
    return 0
