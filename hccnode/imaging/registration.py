"""Rigid then affine registration between phases of one study (moving -> fixed), with a quality
figure and explicit flags. A flagged result is returned with `ok = False` and its problems listed;
callers must not use it silently (the worker records the flag and reports the marker as missing).

Phases of one study share a frame of reference, so the search starts at identity (scanner
coordinates), not at a centre-of-mass or field-of-view alignment that differing z coverage would
bias. Registration runs on a block-averaged copy with ~WORK_SPACING_MM voxels, a 3-level pyramid
and random sampling, which keeps a 512 x 512 x 200 pair within seconds on two cores; the final
transform is applied to the full-resolution moving image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

WORK_SPACING_MM = 2.5  # registration grid (mm, about); finer adds time, not accuracy for ECV ROIs
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS_MM = (4.0, 2.0, 0.0)
SAMPLING_PERCENTAGE = 0.02
MIN_SAMPLES = 20000  # Mattes MI with 32 bins needs enough samples per bin; matters on small/coarse levels
HISTOGRAM_BINS = 32
RIGID_ITERATIONS = 100
AFFINE_ITERATIONS = 60
RIGID_STEP_MM = 2.0  # first optimiser step, as a physical shift
AFFINE_STEP_MM = 0.5
MIN_STEP_MM = 0.01  # stop refining below 1/200 of a work voxel
MASK_MARGIN_MM = 10.0
CLIP_PERCENTILES = (1.0, 99.0)
RANDOM_SEED = 20240101  # fixed, so a re-run of a job gives the same transform and the same outputs

# Quality thresholds. Phases of one CT study aligned on our synthetic and phantom pairs correlate
# (NCC inside the body) above 0.9 despite contrast uptake; below MIN_NCC_AFTER the bodies do not
# overlap well enough to read ROI values across phases.
MIN_NCC_AFTER = 0.7
# Registration must not make the images less similar than the scanner coordinates already were.
MAX_NCC_LOSS = 0.02
# Body volume does not change by more than a few percent between breath-holds; a larger affine
# scale change is the known collapse/stretch failure of mutual-information optimisers.
MAX_VOLUME_CHANGE = 0.10
# Patients on the table between phases move millimetres and a few degrees; beyond these limits
# the optimiser has most likely found a false optimum.
MAX_ROTATION_DEG = 10.0
MAX_TRANSLATION_MM = 30.0


@dataclass(frozen=True)
class RegistrationQuality:
    """Figures of merit. `mattes_mi_*` are final metric values (negative mutual information,
    lower is better); NCC is normalised cross-correlation inside the fixed image's body mask on
    the registration grid, before (scanner coordinates) and after registration. `ok` is False
    when any of `problems` applies; such a result must not be used for measurements."""

    mattes_mi_rigid: float
    mattes_mi_affine: float
    ncc_before: float
    ncc_after: float
    rotation_deg: float
    translation_mm: float
    volume_change: float
    stage_used: str  # "affine", or "rigid" when the affine refinement was rejected
    affine_rejected: str | None
    stop_rigid: str
    stop_affine: str
    ok: bool
    problems: tuple[str, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["problems"] = list(self.problems)
        return d


@dataclass
class Registration:
    """`transform` maps fixed physical points to moving physical points (SimpleITK convention);
    `resampled` is the moving image on the fixed grid (float32, NaN where the moving image has no
    data)."""

    transform: sitk.AffineTransform
    resampled: sitk.Image
    quality: RegistrationQuality


def register(fixed: sitk.Image, moving: sitk.Image, body_mask: sitk.Image | None = None) -> Registration:
    """Register `moving` to `fixed` (rigid, then affine), judge the result, resample.

    `body_mask` (on the fixed grid, non-zero inside the body) restricts the metric and the quality
    figure; without it the fixed image's Otsu foreground is used. The affine stage is kept only if
    it raises NCC over the rigid result without changing the volume beyond MAX_VOLUME_CHANGE;
    otherwise the rigid transform is used and `affine_rejected` says why.
    """
    fixed_f = sitk.Cast(fixed, sitk.sitkFloat32)
    moving_f = sitk.Cast(moving, sitk.sitkFloat32)
    fixed_w, moving_w = _work_copy(fixed_f), _work_copy(moving_f)
    if body_mask is not None:
        mask_w = sitk.Resample(sitk.Cast(body_mask > 0, sitk.sitkUInt8), fixed_w, sitk.Transform(),
                               sitk.sitkNearestNeighbor, 0)
    else:
        mask_w = sitk.OtsuThreshold(fixed_w, 0, 1)
    # A mask tight on the body lets MI ignore where the moving body spills into the fixed image's
    # air, which rewards stretching; a margin around the body keeps the outline in the metric.
    radius = [max(1, int(round(MASK_MARGIN_MM / sp))) for sp in fixed_w.GetSpacing()]
    metric_mask = sitk.BinaryDilate(mask_w, radius)
    fixed_c, moving_c = _clip(fixed_w, metric_mask), _clip(moving_w, None)

    def score(tx: sitk.Transform) -> float:
        """NCC inside the body on the work grid, moving mapped through `tx`."""
        warped = sitk.Resample(moving_w, fixed_w, tx, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
        return ncc(sitk.GetArrayViewFromImage(fixed_w), sitk.GetArrayViewFromImage(warped),
                   sitk.GetArrayViewFromImage(mask_w) > 0)

    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(_centre(fixed_f))
    rigid, mi_rigid, stop_rigid = _run(fixed_c, moving_c, metric_mask, rigid, RIGID_ITERATIONS, SHRINK_FACTORS, RIGID_STEP_MM)

    # The affine stage refines the rigid result: finer levels only and a smaller first step.
    affine, mi_affine, stop_affine = _run(fixed_c, moving_c, metric_mask, _as_affine(rigid), AFFINE_ITERATIONS,
                                          SHRINK_FACTORS[1:], AFFINE_STEP_MM)

    ncc_before, ncc_rigid, ncc_affine = score(sitk.Transform()), score(rigid), score(affine)
    affine_change = _volume_change(affine)
    rejected = None
    if affine_change > MAX_VOLUME_CHANGE:
        rejected = f"affine changes volume by {affine_change:.1%} (> {MAX_VOLUME_CHANGE:.0%})"
    elif not ncc_affine > ncc_rigid:
        rejected = f"affine NCC {ncc_affine:.3f} not above rigid NCC {ncc_rigid:.3f}"
    final = _as_affine(rigid) if rejected else affine
    ncc_after = ncc_rigid if rejected else ncc_affine

    m = np.array(final.GetMatrix()).reshape(3, 3)
    rotation = _rotation_deg(m)
    translation = float(np.linalg.norm(final.GetTranslation()))
    volume_change = _volume_change(final)
    problems = []
    if not (ncc_after >= MIN_NCC_AFTER):
        problems.append(f"NCC after registration {ncc_after:.3f} < {MIN_NCC_AFTER}")
    if ncc_after < ncc_before - MAX_NCC_LOSS:
        problems.append(f"registration lowered NCC from {ncc_before:.3f} to {ncc_after:.3f}")
    if rotation > MAX_ROTATION_DEG:
        problems.append(f"rotation {rotation:.1f} deg > {MAX_ROTATION_DEG} deg")
    if translation > MAX_TRANSLATION_MM:
        problems.append(f"translation {translation:.1f} mm > {MAX_TRANSLATION_MM} mm")
    quality = RegistrationQuality(
        mattes_mi_rigid=mi_rigid, mattes_mi_affine=mi_affine, ncc_before=ncc_before, ncc_after=ncc_after,
        rotation_deg=rotation, translation_mm=translation, volume_change=volume_change,
        stage_used="rigid" if rejected else "affine", affine_rejected=rejected,
        stop_rigid=stop_rigid, stop_affine=stop_affine, ok=not problems, problems=tuple(problems),
    )
    resampled = sitk.Resample(moving_f, fixed_f, final, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
    return Registration(final, resampled, quality)


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two arrays over `mask` and where both are finite;
    NaN when fewer than 2 voxels or no variance."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    sel = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        sel &= np.asarray(mask, dtype=bool)
    if sel.sum() < 2:
        return float("nan")
    x, y = a[sel] - a[sel].mean(), b[sel] - b[sel].mean()
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denom if denom > 0 else float("nan")


def _work_copy(img: sitk.Image) -> sitk.Image:
    """The image block-averaged (BinShrink: anti-aliased and linear time) to voxels of about
    WORK_SPACING_MM where it is finer."""
    factors = [max(1, int(round(WORK_SPACING_MM / s))) for s in img.GetSpacing()]
    return sitk.BinShrink(img, factors) if max(factors) > 1 else img


def _clip(img: sitk.Image, mask: sitk.Image | None) -> sitk.Image:
    """Clamp to the CLIP_PERCENTILES of the values (inside `mask` if given), so the histogram bins
    resolve soft tissue instead of spending most bins on air and dense bone."""
    arr = sitk.GetArrayViewFromImage(img)
    values = arr[sitk.GetArrayViewFromImage(mask) > 0] if mask is not None else arr.ravel()
    if values.size == 0:
        return img
    lo, hi = np.percentile(values, CLIP_PERCENTILES)
    if hi <= lo:
        return img
    return sitk.Clamp(img, sitk.sitkFloat32, float(lo), float(hi))


def _centre(img: sitk.Image) -> tuple[float, float, float]:
    return img.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in img.GetSize()])


def _run(fixed, moving, mask, initial, iterations, shrink_factors, step_mm):
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    in_mask = float(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    reg.SetMetricSamplingPercentagePerLevel(
        [min(1.0, max(SAMPLING_PERCENTAGE, MIN_SAMPLES * f**3 / max(in_mask, 1.0))) for f in shrink_factors], RANDOM_SEED
    )
    reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=step_mm, minStep=MIN_STEP_MM, numberOfIterations=iterations, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    levels = [SHRINK_FACTORS.index(f) for f in shrink_factors]
    reg.SetShrinkFactorsPerLevel(list(shrink_factors))
    reg.SetSmoothingSigmasPerLevel([SMOOTHING_SIGMAS_MM[i] for i in levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    out = reg.Execute(fixed, moving)
    if isinstance(out, sitk.CompositeTransform):
        out = out.GetNthTransform(out.GetNumberOfTransforms() - 1)
    out = out.Downcast()
    return out, float(reg.GetMetricValue()), reg.GetOptimizerStopConditionDescription()


def _as_affine(rigid: sitk.Euler3DTransform) -> sitk.AffineTransform:
    affine = sitk.AffineTransform(3)
    affine.SetCenter(rigid.GetCenter())
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    return affine


def _volume_change(tx: sitk.AffineTransform) -> float:
    return float(abs(np.linalg.det(np.array(tx.GetMatrix()).reshape(3, 3)) - 1.0))


def _rotation_deg(m: np.ndarray) -> float:
    """Rotation angle (deg) of the nearest rotation to `m` (polar decomposition)."""
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))
