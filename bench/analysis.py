"""Analysis latency and memory: register three enhanced phases to the unenhanced one and measure
the markers on a synthetic 4-phase CECT study (default 4 x 200 slices of 512 x 512, the size of
paper 001's protocol: 1.5 mm slices, 512 matrix). Prints wall time per step and peak RSS.

    python bench/analysis.py [--slices 200] [--matrix 512]

Not run by the tests. Volumes are built in memory (no DICOM I/O), so this times the imaging
engine only; ingest has its own benchmark.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hccnode.imaging import ecv, registration, size  # noqa: E402

PHASE_ENHANCEMENT = {  # HU added to (liver, tumor, aorta) per phase
    "unenhanced": (0, 0, 0),
    "arterial": (25, 60, 330),
    "portal": (55, 80, 150),
    "equilibrium": (58, 85, 120),
}
MOTION = {"arterial": ((2.0, -3.0, 1.5), 1.0), "portal": ((-3.0, 2.0, -2.0), -2.0), "equilibrium": ((3.0, 4.0, 0.0), 3.0)}


def phantom(slices: int, matrix: int, phase: str, rng: np.random.Generator):
    pixel, thick = 380.0 / matrix, 1.5
    arr = np.full((slices, matrix, matrix), -1000, dtype=np.float32)
    yy, xx = np.mgrid[0:matrix, 0:matrix].astype(np.float32) * pixel - 190.0
    labels = {}
    for k in range(slices):
        z = (k - slices / 2) * thick
        body = (xx / (150 + 10 * np.sin(z / 40))) ** 2 + (yy / 110) ** 2 <= 1
        plane = np.where(body, np.float32(-90), np.float32(-1000))
        plane[(xx / 135) ** 2 + (yy / 98) ** 2 <= 1] = 40
        liver = ((xx + 60) / 80) ** 2 + ((yy + 10) / 65) ** 2 + (z / 120) ** 2 <= 1
        tumor = ((xx + 70) / 20) ** 2 + ((yy + 5) / 20) ** 2 + (z / 20) ** 2 <= 1
        aorta = ((xx - 20) / 12) ** 2 + ((yy - 20) / 12) ** 2 <= 1
        spine = ((xx - 0) / 18) ** 2 + ((yy - 55) / 18) ** 2 <= 1
        plane[liver] = 55
        plane[tumor] = 40
        plane[aorta] = 40
        plane[spine] = 450 if np.sin(z / 6) > -0.3 else 80
        d_liver, d_tumor, d_aorta = PHASE_ENHANCEMENT[phase]
        plane[liver & ~tumor] += d_liver
        plane[tumor] += d_tumor
        plane[aorta] += d_aorta
        arr[k] = plane + rng.normal(0, 10, plane.shape).astype(np.float32)
        if phase == "unenhanced":
            for name, m in (("liver", liver & ~tumor), ("tumor", tumor), ("aorta", aorta)):
                labels.setdefault(name, np.zeros(arr.shape, bool))[k] = m
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((pixel, pixel, thick))
    img.SetOrigin((-190.0, -190.0, -slices / 2 * thick))
    if phase in MOTION:
        shift, deg = MOTION[phase]
        t = sitk.Euler3DTransform()
        t.SetCenter(img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in img.GetSize()]))
        t.SetRotation(0, 0, np.radians(deg))
        t.SetTranslation(shift)
        img = sitk.Resample(img, img, t, sitk.sitkLinear, -1000.0)
    return img, labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--matrix", type=int, default=512)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    timings: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        result = fn()
        timings[name] = time.perf_counter() - t0
        return result

    fixed, labels = timed("build unenhanced", lambda: phantom(args.slices, args.matrix, "unenhanced", rng))
    start = time.perf_counter()
    regs = {}
    for phase in ("arterial", "portal", "equilibrium"):
        moving, _ = timed(f"build {phase}", lambda: phantom(args.slices, args.matrix, phase, rng))
        regs[phase] = timed(f"register {phase}", lambda: registration.register(fixed, moving))
        del moving
    un = sitk.GetArrayViewFromImage(fixed)
    eq = sitk.GetArrayViewFromImage(regs["equilibrium"].resampled)
    spacing = fixed.GetSpacing()[::-1]

    def markers():
        d_aorta = float(np.nanmean(eq[labels["aorta"]]) - un[labels["aorta"]].mean())
        roi = {r: ecv.cect_ecv(un[labels[r]].mean(), float(np.nanmean(eq[labels[r]])), 0.0, d_aorta, hct=0.40).ecv_percent
               for r in ("tumor", "liver")}
        emap = ecv.ecv_map_percent(un, eq, labels["liver"] | labels["tumor"], d_aorta, 0.40, spacing)
        diameter = size.max_inplane_diameter_mm(labels["tumor"], spacing)[0]
        return roi, float(np.nanmean(emap)), diameter, size.volume_ml(labels["tumor"], spacing)

    roi, map_mean, diameter, vol = timed("markers (ROI ECV, ECV map, size)", markers)
    analysis = time.perf_counter() - start - sum(v for k, v in timings.items() if k.startswith("build ") and k != "build unenhanced")
    for name, sec in timings.items():
        print(f"{name:36s} {sec:7.2f} s")
    for phase, r in regs.items():
        q = r.quality
        print(f"  {phase:12s} ok={q.ok} stage={q.stage_used} ncc {q.ncc_before:.3f}->{q.ncc_after:.3f} "
              f"rot {q.rotation_deg:.2f} deg shift {q.translation_mm:.2f} mm")
    print(f"ECV tumor {roi['tumor']:.2f} %, liver {roi['liver']:.2f} %, map mean {map_mean:.2f} %, "
          f"tumor diameter {diameter:.1f} mm, volume {vol:.1f} mL")
    print(f"analysis wall time (registration + markers) {analysis:.1f} s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
