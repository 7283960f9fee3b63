"""Rigid then affine registration between phases of one study (moving -> fixed), with a quality
figure and explicit flags. A flagged result is returned with `ok = False` and its problems listed;
callers must not use it silently (the worker records the flag and reports the marker as missing).

Phases of one study share a frame of reference, so the search starts at identity (scanner
coordinates), not at a centre-of-mass or field-of-view alignment that differing z coverage would
bias. Registration runs on block-averaged float32 copies with ~WORK_SPACING_MM voxels (the fixed one
cut to the body's bounding box), a 2-level pyramid and a fixed number of random samples per level
with a fixed seed, so a 512 x 512 x 200 pair takes about a second of one core and a re-run gives
the same transform bit for bit. The full-resolution images are never copied; the final transform
is applied to the full-resolution moving image when `Registration.resampled` is first read.
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from hccnode.imaging.roi_stats import bounding_box

WORK_SPACING_MM = 4.0  # registration grid (mm, about); finer adds time, not accuracy for ECV ROIs
# A small field of view keeps at least this many voxels per axis (MI needs the anatomy resolved;
# such images are cheap at their own resolution).
MIN_WORK_VOXELS = 64
SHRINK_FACTORS = (4, 2, 1)
# Gaussian sigma per level in work-grid voxels (half the shrink factor): 8 / 4 / 0 mm on the
# 4 mm grid, less on a small field of view kept at its own finer voxels.
SMOOTHING_SIGMAS_VOXELS = (2.0, 1.0, 0.0)
# Mattes MI is estimated from a fixed number of random samples per level (fixed seed), not a
# fraction of the voxels, so the cost does not grow with the matrix (16000 samples over 32 x 32
# joint-histogram bins, most of which are empty for two CT phases).
SAMPLES_PER_LEVEL = 16000
HISTOGRAM_BINS = 32
RIGID_ITERATIONS = 100
# Phases of one study start close, so the affine stage refines the rigid result on the finest
# level only, with few iterations.
AFFINE_ITERATIONS = 30
RIGID_STEP_MM = 2.0  # first optimiser step, as a physical shift
AFFINE_STEP_MM = 0.5
MIN_STEP_MM = 0.01  # stop refining below 1/400 of a work voxel
MASK_MARGIN_MM = 10.0
CLIP_PERCENTILES = (1.0, 99.0)
# Threads split the metric's samples and sum partial histograms in an order that varies between
# runs, which changes the last bits and can steer the optimiser; one thread makes a re-run
# bit-identical. The sample count above keeps one thread fast.
REGISTRATION_THREADS = 1
# The thread count is SimpleITK's global default (the method's own setting does not reach the
# metric), so registrations in different Python threads take turns: each sets and restores it.
_THREADS_LOCK = threading.Lock()
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


class Registration:
    """`transform` maps fixed physical points to moving physical points (SimpleITK convention);
    `resampled` is the moving image on the fixed grid (float32, NaN where the moving image has no
    data). It is computed on first access (a phase used only for its transform, e.g. to carry
    ROIs, never pays for a full-resolution resampling); until then the Registration holds a
    reference to the moving image (no copy), afterwards only the resampled image."""

    def __init__(self, transform: sitk.AffineTransform, resampled: sitk.Image | None, quality: RegistrationQuality,
                 moving: sitk.Image | None = None, fixed: sitk.Image | None = None):
        if resampled is None and (moving is None or fixed is None):
            raise ValueError("a Registration needs the resampled image, or the moving and fixed images to make it")
        self.transform = transform
        self.quality = quality
        self._resampled = resampled
        self._moving = moving
        self._grid = None if fixed is None else (fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
                                                 fixed.GetDirection())

    @property
    def resampled(self) -> sitk.Image:
        if self._resampled is None:
            size, origin, spacing, direction = self._grid
            self._resampled = sitk.Resample(self._moving, size, self.transform, sitk.sitkLinear, origin, spacing,
                                            direction, float("nan"), sitk.sitkFloat32)
            self._moving = None
        return self._resampled

    def __repr__(self) -> str:
        return f"Registration(transform={self.transform.GetParameters()}, quality={self.quality})"


def register(fixed: sitk.Image, moving: sitk.Image, body_mask: sitk.Image | None = None) -> Registration:
    """Register `moving` to `fixed` (rigid, then affine), judge the result; `resampled` on demand.

    `body_mask` (on the fixed grid, non-zero inside the body) restricts the metric and the quality
    figure; without it the fixed image's Otsu foreground is used. The affine stage is kept only if
    it raises NCC over the rigid result without changing the volume beyond MAX_VOLUME_CHANGE;
    otherwise the rigid transform is used and `affine_rejected` says why.

    Everything runs on block-averaged float32 copies (~WORK_SPACING_MM), the fixed one cropped to
    the bounding box of the metric mask; the full-resolution images are only read, never copied.
    """
    fixed_w, moving_w = _work_copy(fixed), _work_copy(moving)
    if body_mask is not None:
        mask_w = sitk.Resample(sitk.Cast(body_mask > 0, sitk.sitkUInt8), fixed_w, sitk.Transform(),
                               sitk.sitkNearestNeighbor, 0)
    else:
        mask_w = sitk.OtsuThreshold(fixed_w, 0, 1)
    # A mask tight on the body lets MI ignore where the moving body spills into the fixed image's
    # air, which rewards stretching; a margin around the body keeps the outline in the metric.
    fixed_w, mask_w, metric_mask = _margin_and_crop(fixed_w, mask_w)
    fixed_c, moving_c = _clip(fixed_w, metric_mask), _clip(moving_w, None)
    body = sitk.GetArrayViewFromImage(mask_w) > 0
    fixed_body = sitk.GetArrayViewFromImage(fixed_w)[body]

    def score(tx: sitk.Transform) -> float:
        """NCC inside the body on the work grid, moving mapped through `tx`."""
        warped = sitk.Resample(moving_w, fixed_w, tx, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
        return ncc(fixed_body, sitk.GetArrayViewFromImage(warped)[body])

    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(_centre(fixed))
    rigid, mi_rigid, stop_rigid = _run(fixed_c, moving_c, metric_mask, rigid, RIGID_ITERATIONS, SHRINK_FACTORS, RIGID_STEP_MM)

    # The affine stage refines the rigid result: finest level only and a smaller first step.
    affine, mi_affine, stop_affine = _run(fixed_c, moving_c, metric_mask, _as_affine(rigid), AFFINE_ITERATIONS,
                                          SHRINK_FACTORS[-1:], AFFINE_STEP_MM)

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
    return Registration(final, None, quality, moving=moving, fixed=fixed)


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
    WORK_SPACING_MM where it is finer (but at least MIN_WORK_VOXELS per axis), as float32. Shrinks before casting, so the full-resolution
    image is never copied."""
    factors = [max(1, min(int(round(WORK_SPACING_MM / s)), n // MIN_WORK_VOXELS))
               for s, n in zip(img.GetSpacing(), img.GetSize())]
    if max(factors) > 1:
        img = sitk.BinShrink(img, factors)
    return sitk.Cast(img, sitk.sitkFloat32) if img.GetPixelID() != sitk.sitkFloat32 else img


def _margin_and_crop(fixed_w: sitk.Image, mask_w: sitk.Image) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """(fixed, body mask, metric mask) cut to the bounding box of the metric mask, which is the
    body mask grown by MASK_MARGIN_MM (a box, separable, so linear time)."""
    radius = [max(1, int(round(MASK_MARGIN_MM / sp))) for sp in fixed_w.GetSpacing()[::-1]]  # z, y, x
    grown = ndimage.maximum_filter(sitk.GetArrayViewFromImage(mask_w) > 0, size=[2 * r + 1 for r in radius])
    box = [(b.start, b.stop) for b in bounding_box(grown) or [slice(0, n) for n in grown.shape]]
    lo = [b[0] for b in box][::-1]
    size = [b[1] - b[0] for b in box][::-1]
    fixed_w, mask_w = (sitk.RegionOfInterest(img, size, lo) for img in (fixed_w, mask_w))
    metric_mask = sitk.GetImageFromArray(grown[tuple(slice(a, b) for a, b in box)].astype(np.uint8))
    metric_mask.CopyInformation(fixed_w)
    return fixed_w, mask_w, metric_mask


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
    # The percentage is of the level's whole (shrunk) grid; samples outside the mask are dropped.
    voxels = float(np.prod(mask.GetSize()))
    reg.SetMetricSamplingPercentagePerLevel(
        [min(1.0, SAMPLES_PER_LEVEL * f**3 / voxels) for f in shrink_factors], RANDOM_SEED
    )
    reg.SetMetricFixedMask(mask)
    # Gradients by central differences at the samples: a few thousand samples do not pay for
    # gradient images of both volumes at every level.
    reg.SetMetricUseFixedImageGradientFilter(False)
    reg.SetMetricUseMovingImageGradientFilter(False)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=step_mm, minStep=MIN_STEP_MM, numberOfIterations=iterations, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    levels = [SHRINK_FACTORS.index(f) for f in shrink_factors]
    reg.SetShrinkFactorsPerLevel(list(shrink_factors))
    reg.SetSmoothingSigmasPerLevel([SMOOTHING_SIGMAS_VOXELS[i] for i in levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(initial, inPlace=False)
    # The metric takes its thread count from the global default when Execute builds it.
    with _THREADS_LOCK:
        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(REGISTRATION_THREADS)
        try:
            out = reg.Execute(fixed, moving)
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
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
