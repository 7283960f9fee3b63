"""Automatic ROIs for the roles a reader did not draw: aorta, three liver ROIs and erector spinae
on an enhanced CT phase (paper 001), erector spinae on a T2-weighted MR series (paper 003).

A tumor is never placed here. What cannot be placed is said in `Placement.notes` (never an
exception); only unusable input (not a 3-D CT / MR volume, oblique orientation) raises.

Rules, from the papers:
* Paper 001 (001_c4ba0269da651d59.txt, Methods "Extracellular volume fraction analysis"):
  three liver ROIs of about 100 mm^2 "in the anterior and posterior segments of the right lobe
  as well as the left lateral segment", "excluding large intrahepatic vessels and liver tumors";
  an aortic ROI of about 100 mm^2 "at the same level", "avoiding vessel wall calcifications and
  wall thrombus".
* Paper 003 (003_12b417b4b575f485.txt, Methods "Image analysis"): "a single ROI ... in the
  erector spinae muscle region at the same slice" as the tumor's maximal diameter. The paper
  gives no muscle ROI size; we use paper 001's 100 mm^2 (our choice). Without a tumor the slice
  is unknown here, so the MR muscle ROI covers every slice where the muscle is found; a caller
  that follows paper 003 strictly keeps the tumor's slice of it.

Our choices (not from the papers), each explained where it is defined: the ROIs span a slab of
+/- 10 mm around one level rather than one slice (automatic ROIs have no reader to average out
noise), the clearance from liver edge, vessels and lesions, and the deviation that counts as a
lesion. Thresholds come from anatomy and attenuation physiology, not from the phantom.

Pure functions work on LPS-ordered arrays ([z, y, x], x towards patient Left, y Posterior; see
hccnode.imaging.anatomy); `place_ct_rois` / `place_mr_muscle` are the thin shells on a Volume.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from hccnode.imaging.anatomy import (CALCIUM_ABOVE_LUMEN_HU, CALCIUM_UNENHANCED_HU, VERTEBRAL_MID_MM, Lumen, Spine,
                                     aortic_lumen, body_mask, disk_mask, fill_holes_2d, find_spine, image_lps_order)
from hccnode.imaging import liver
from hccnode.imaging.measure import AUTOMATIC, RoiRef
from hccnode.imaging.roi_stats import bounding_box
from hccnode.imaging.rois import RoiMask
from hccnode.imaging.volumes import Volume

# Paper 001: liver and aortic ROIs of "approximately 100 mm^2".
ROI_AREA_MM2 = 100.0
ROI_RADIUS_MM = float(np.sqrt(ROI_AREA_MM2 / np.pi))
# Smallest ROI worth placing when a structure is too thin for 100 mm^2 (about 20 mm^2).
MIN_ROI_RADIUS_MM = 2.5
# ROIs span +/- 10 mm around the chosen level (our choice; the papers use one slice). Averaging a
# few slices lowers noise; 20 mm stays inside one Couinaud segment, which are several cm high.
SLAB_HALF_MM = 10.0
# Clearance between a liver ROI and the liver edge, a vessel, a lesion or the caller's avoid mask
# (our choice): beyond the partial-volume width of a CT voxel and the few mm that phases still
# differ by after registration. Halved, with a note, where the full clearance fits nowhere.
LIVER_MARGIN_MM = 5.0
# In-plane smoothing before judging attenuation, so that noise is not taken for a lesion.
SMOOTH_MM = 2.0
# Liver parenchyma is homogeneous; a region deviating from its median by more than this (or by 4
# robust SD of the smoothed liver, if noise is larger) is not parenchyma: contrast-filled vessels
# read tens of HU above liver in portal and equilibrium phases, and a wash-out lesion reads
# visibly lower (our choice of 10 HU for "visibly"; the papers leave it to the reader's eye).
DEVIATION_HU = 10.0
DEVIATION_NOISE_SD = 4.0
# A liver ROI goes where the parenchyma is cleanest: its neighbourhood is first required to stay
# within the stricter of these deviations (in robust SDs, each at least DEVIATION_HU / 4 HU), then
# the laxer. A small vessel at high noise reads only 2-3 SD above parenchyma; noise alone keeps a
# ROI's whole neighbourhood (some 50 independent smoothed samples) within 2.5 SD about half the
# time, so a spot clean at the strict level exists in most livers (our choice).
DEVIATION_LEVELS = (2.5, 3.0, DEVIATION_NOISE_SD)
# ... but a cleaner spot is taken only within this detour (mm) of the nearest spot to the target at
# any level, so that the ROI stays in its segment (Couinaud segments are several cm across).
CLEANER_DETOUR_MM = 20.0
# A ROI's own mean is a far quieter judge than its voxels: over 100 mm^2 and its slab, tissue
# that is not parenchyma (muscle against a thin left lobe, a vessel's partial volume) shifts the
# mean by several of its standard errors while single voxels stay within noise. A spot whose
# ROI-sized mean (HU and, with an unenhanced phase, enhancement) departs from the median of such
# means over the liver's other clear spots by more than this many of their robust SDs is not
# taken (our choice).
ROI_MEAN_SD = 3.0
# ... judged only where the liver has at least this many clear spots to compare with.
ROI_MEAN_MIN_SPOTS = 30
# The liver lies inside the abdominal wall, whose muscles (rectus abdominis about 10 mm thick, the
# three lateral muscles together more; the diaphragm 3-5 mm) may touch it with no fat between and,
# at portal venous / equilibrium phase, read like a cirrhotic liver in both HU and enhancement, so
# the found edge may be the muscle's outer one, against subcutaneous fat. A ROI's clearance disk
# therefore keeps this far (mm) from fat (below -30 HU) and air as well (our choice, from those
# thicknesses): parenchyma against visceral fat loses only room, never a ROI's purity.
WALL_MM = 12.0
FAT_HU = -30.0
# Aortic ROI: at least this far from the wall or calcium (partial volume of the wall).
AORTA_WALL_MARGIN_MM = 2.0
# The left lateral segment lies left of the falciform ligament, near the body midline; its ROI
# centre may sit at most this far to the patient's right of the midline (rotation, fissure position).
LEFT_LATERAL_RIGHT_OF_MIDLINE_MM = 25.0
# The left lateral target is the centre of the liver's leftmost 30 mm at the chosen level.
LEFT_TIP_MM = 30.0
# Skeletal muscle: not fat (fat is below -30 HU) and not bone (above 150 HU is bone or contrast);
# fatty infiltration lowers muscle towards 0-20 HU, enhancement raises it by 10-30 HU.
MUSCLE_HU = (-29.0, 150.0)
# Erector spinae: beside the spinous process (a midline gap for the canal and the process) up
# to 80 mm lateral, in the posterior half of the body; ROI at least 3 mm inside the muscle.
MIDLINE_GAP_MM = 8.0
PARASPINAL_MAX_MM = 80.0
MUSCLE_MARGIN_MM = 3.0
# A muscle component must lie mostly (70%) inside the paraspinal window (so an organ reaching
# into it is not taken) and must not reach within 5 mm of the body outline: on the back, skin and
# subcutaneous fat lie over the erector spinae (several mm even in thin patients).
WINDOW_FRACTION = 0.7
SKIN_MM = 5.0
LEVEL_CANDIDATES = 5
# The search runs on slices about 5 mm apart with pixels of at least 1.5 mm (block means): enough
# to find organs and places; the ROIs are then painted at full resolution.
SEARCH_SLICE_MM = 5.0
SEARCH_PIXEL_MM = 1.5

LIVER_LABELS = ("liver right anterior", "liver right posterior", "liver left lateral")


@dataclass
class Placement:
    """Automatic ROIs on the volume's grid and notes on what could not be placed, and why."""

    rois: list[RoiMask] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def by_role(self, role: str) -> list[RoiMask]:
        return [r for r in self.rois if r.role == role]


@dataclass
class PlacedMask:
    """One ROI in LPS array order (pure result, before it goes back onto the image grid), with
    how it was placed: disk centres per slice (row, column index), radius, the clearance around
    it and the HU band that clearance must stay in (fixed, or `ref_hu` +/- a noise-based width)."""

    role: str
    label: str
    mask: np.ndarray
    radius_mm: float = ROI_RADIUS_MM
    centres: dict[int, tuple[float, float]] = field(default_factory=dict)
    clearance_mm: float = 0.0
    band: tuple[float, float] | None = None
    ref_hu: float | None = None
    band_above_hu: float | None = None   # upper band width when not symmetric (aortic calcium)


# ---------------------------------------------------------------- shells on a Volume

def place_ct_rois(volume: Volume, avoid: sitk.Image | None = None, unenhanced: sitk.Image | None = None,
                  vessels: sitk.Image | None = None) -> Placement:
    """Aorta, three liver ROIs (paper 001) and erector spinae on an enhanced CT phase (portal
    venous or equilibrium); no ROI touches `avoid` (e.g. the reader's tumors). `unenhanced`: the
    unenhanced phase (or a dual-energy virtual unenhanced image) on the volume's grid, whose
    difference from the volume (the enhancement) helps tell the liver from touching organs.
    `vessels`: another enhanced phase on the volume's grid in which the intrahepatic vessels
    stand out more (the portal venous phase, for an equilibrium volume); liver ROIs keep clear of
    what departs from parenchyma there too."""
    _check_ct(volume)
    arr, spacing, order = _lps_array(volume)
    avoid_lps = None
    if avoid is not None:
        avoid_lps = order.apply(_on_grid(avoid, volume) > 0)

    def other_phase(img: sitk.Image | None) -> np.ndarray | None:
        if img is None:
            return None
        values = order.apply(sitk.GetArrayViewFromImage(img).astype(np.float32, copy=False))
        # no data (outside the other series' field) reads as the volume itself: nothing seen there
        return np.where(np.isfinite(values), values, arr)

    placed, notes = ct_roi_masks(arr, spacing, avoid_lps, other_phase(unenhanced), other_phase(vessels))
    return _placement(placed, notes, volume, order)


def place_mr_muscle(volume: Volume) -> Placement:
    """An erector spinae ROI on a T2-weighted MR series (paper 003's T2 SIR reference)."""
    if volume.modality not in (None, "", "MR"):
        raise ValueError(f"series {volume.series_number}: the MR muscle ROI needs an MR series, got {volume.modality}")
    arr, spacing, order = _lps_array(volume)
    placed, notes = mr_muscle_mask(arr, spacing)
    return _placement(placed, notes, volume, order)


def _lps_array(volume: Volume):
    img = volume.image
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"series {volume.series_number}: need a 3-D grayscale volume, got "
                         f"{img.GetDimension()}-D with {img.GetNumberOfComponentsPerPixel()} component(s)")
    order = image_lps_order(img)  # ValueError for an oblique orientation
    arr = order.apply(sitk.GetArrayViewFromImage(img).astype(np.float32, copy=False))
    arr = np.ascontiguousarray(arr)
    if not np.isfinite(arr).all():
        raise ValueError(f"series {volume.series_number}: volume has non-finite values")
    return arr, order.spacing(img.GetSpacing()[::-1]), order


def _on_grid(mask: sitk.Image, volume: Volume) -> np.ndarray:
    """`mask` as an array on the volume's grid (resampled, nearest neighbour, if it is not on it)."""
    ref = volume.image
    same = (mask.GetSize() == ref.GetSize()
            and np.allclose(mask.GetSpacing(), ref.GetSpacing(), atol=1e-4)
            and np.allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-4))
    if not same:
        mask = sitk.Resample(sitk.Cast(mask > 0, sitk.sitkUInt8), ref, sitk.Transform(), sitk.sitkNearestNeighbor,
                             0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(mask)


def _placement(placed: list[PlacedMask], notes: list[str], volume: Volume, order) -> Placement:
    out = Placement(notes=list(notes))
    for p in placed:
        img = sitk.GetImageFromArray(np.ascontiguousarray(order.invert(p.mask)).astype(np.uint8))
        img.CopyInformation(volume.image)
        out.rois.append(RoiMask(img, RoiRef(name=p.role, source=AUTOMATIC, label=p.label)))
    return out


# ---------------------------------------------------------------- geometry helpers

def _depth(mask2d: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Distance (mm) from each pixel of `mask2d` to the nearest pixel outside it (image border
    counts as outside)."""
    return ndimage.distance_transform_edt(np.pad(mask2d, 1), sampling=(dy, dx))[1:-1, 1:-1]


def _slab(k0: int, nz: int, dz: float, half_mm: float) -> list[int]:
    h = int(np.floor(half_mm / dz + 1e-6)) if dz > 0 else 0
    return [k for k in range(k0 - h, k0 + h + 1) if 0 <= k < nz]


def _smooth(img: np.ndarray, spacing, mm: float, min_px: float = 1.0) -> np.ndarray:
    """In-plane Gaussian smoothing with sigma `mm` (at least `min_px` pixels)."""
    _, dy, dx = spacing
    return ndimage.gaussian_filter(img.astype(np.float32), sigma=(0.0, max(mm / dy, min_px), max(mm / dx, min_px)))


# ---------------------------------------------------------------- CT

@dataclass
class LiverMap:
    """Liver at every slice: `organ` its extent (holes filled); `deviation` how far each voxel of
    it departs from parenchyma, in robust SDs (the larger of its smoothed HU's and, with an
    unenhanced phase, its enhancement's; infinite where avoided): `clear(t)` is the parenchyma
    within t of them; the parenchyma median and the deviation threshold (HU) at
    DEVIATION_NOISE_SD."""

    organ: np.ndarray
    deviation: np.ndarray
    median_hu: float
    threshold_hu: float
    values: list = field(default_factory=list)   # per slice k: HU (and enhancement) for ROI means
    fat: np.ndarray | None = None                             # fat and air (for WALL_MM), when found here

    def clear(self, k: int, t: float = DEVIATION_NOISE_SD) -> np.ndarray:
        """Parenchyma on slice `k` within `t` robust SDs (not a vessel, lesion or avoided voxel)."""
        return self.deviation[k] <= t


def _deviation(smooth: np.ndarray, sample: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(|smooth - median| / scale over `region` (inf elsewhere), median, scale): median and scale
    (robust SD, at least DEVIATION_HU / DEVIATION_NOISE_SD) of `smooth` over `sample`."""
    median, threshold = _parenchyma(smooth[sample])
    scale = threshold / DEVIATION_NOISE_SD
    dev = np.abs(smooth - np.float32(median))
    dev /= np.float32(scale)
    dev[~region] = np.inf
    return dev, median, scale


def liver_map(hu: np.ndarray, spacing, body: np.ndarray, spine: Spine, avoid: np.ndarray | None = None,
              unenhanced: np.ndarray | None = None, enhanced: bool = False, vessels: np.ndarray | None = None
              ) -> tuple[LiverMap | None, list[str]]:
    """The liver's extent found by hccnode.imaging.liver (separated from touching organs of
    similar attenuation) and its parenchyma: voxels of the extent whose smoothed HU is within the
    deviation threshold of the liver's median and, with a registered `unenhanced` phase, whose
    smoothed enhancement is within the same rule of the liver's median enhancement: vessels
    enhance by the blood's whole dHU, the parenchyma by only its extracellular share of it (a
    quarter to a half: ECV / (1 - HCT), paper 001), so a vessel stands out more in the
    enhancement than in the enhanced phase; muscle (diaphragm, abdominal wall) enhances far less
    and a lesion differently. (None, what was found instead) when no liver is found."""
    found, why = liver.find_liver_extent(hu, spacing, body, spine.x, spine.anterior_y, unenhanced, enhanced)
    if found is None:
        return None, why
    organ = found.organ & body
    organ_clear = organ if avoid is None else organ & ~avoid
    smooth = _smooth(hu, spacing, SMOOTH_MM)
    # worked in the organ's box (widened by the smoothing's reach); infinite deviation outside it
    _, dy, dx = spacing
    box = bounding_box(organ, (0, int(np.ceil(3 * SMOOTH_MM / dy)) + 1, int(np.ceil(3 * SMOOTH_MM / dx)) + 1))
    deviation = np.full(hu.shape, np.inf, np.float32)
    deviation[box], median, scale = _deviation(smooth[box], found.sample[box], organ_clear[box])
    values = [lambda k: hu[k]]
    if unenhanced is not None:
        enh, _, _ = _deviation(smooth[box] - _smooth(unenhanced[box], spacing, SMOOTH_MM), found.sample[box],
                               organ_clear[box])
        np.maximum(deviation[box], enh, out=deviation[box])
        values.append(lambda k: hu[k] - unenhanced[k])
    if vessels is not None:
        in_vessel_phase, _, _ = _deviation(_smooth(vessels[box], spacing, SMOOTH_MM), found.sample[box], organ_clear[box])
        np.maximum(deviation[box], in_vessel_phase, out=deviation[box])
    return LiverMap(organ, deviation, median, DEVIATION_NOISE_SD * scale, values, smooth < FAT_HU), []


def _liver_targets(organ2d: np.ndarray, x_mid: float, spacing) -> dict[str, tuple]:
    """Per liver label: (target (y, x) in index units, allowed-centre mask) at one level.

    Right lobe: the liver right of the midline. The right hepatic vein divides it into an
    anterior and a posterior sector along a plane from the IVC out to the lateral edge, so the
    targets are the centroids of the lobe's anterolateral and posterolateral quadrants (split at
    the lobe's centroid); centres stay in their anterior / posterior half. Left lateral: the
    centroid of the liver's leftmost 30 mm, centre no more than 25 mm right of the midline."""
    _, dy, dx = spacing
    yy, xx = np.mgrid[:organ2d.shape[0], :organ2d.shape[1]]
    out: dict[str, tuple] = {}
    right = organ2d & (xx < x_mid)
    if right.any():
        rcy, rcx = yy[right].mean(), xx[right].mean()
        for label, half in ((LIVER_LABELS[0], yy < rcy), (LIVER_LABELS[1], yy >= rcy)):
            part = right & half & (xx <= rcx)
            if part.any():
                out[label] = ((yy[part].mean(), xx[part].mean()), (xx < x_mid) & half)
    if organ2d.any():
        x_left = xx[organ2d].max()
        tip = organ2d & (xx >= x_left - LEFT_TIP_MM / dx)
        allowed = xx >= x_mid - LEFT_LATERAL_RIGHT_OF_MIDLINE_MM / dx
        out[LIVER_LABELS[2]] = ((yy[tip].mean(), xx[tip].mean()), allowed)
    return out


def z_guard(margin_mm: float, dz_fine: float, zstep: int) -> int:
    """Search slices to check beyond each end of a ROI's slab so that every voxel within
    `margin_mm` of its painted slices (3-D, along z) lies between checked slices.

    A search slice k stands for the fine slices k*zstep - (zstep-1)//2 ... k*zstep + zstep//2
    (zstep fine slices of `dz_fine` mm; what lies between two checked search slices is taken as
    they are: organs do not end and restart within one search step). The first unchecked fine
    slice beyond the slab then lies at least (e*zstep - zstep//2 + 1) fine slices from the painted
    end, which must be >= the margin."""
    need = margin_mm / dz_fine - 1.0 + zstep // 2
    return max(0, int(np.ceil(need / zstep - 1e-9)))


def _place_liver_rois(lm: LiverMap, k0: int, x_mid: float, spacing, guard: int = 0,
                      depth_cache: dict | None = None) -> tuple[list[PlacedMask], list[str]]:
    """Paper 001's three liver ROIs at level `k0`: each the spot nearest its target (see
    `_liver_targets`) whose disk of ROI_RADIUS_MM keeps LIVER_MARGIN_MM from the liver's found
    edge, vessels and lesions in 3-D: on every slice of its slab and on `guard` slices beyond each
    end (see `z_guard`), the disk's centre lies ROI_RADIUS_MM + LIVER_MARGIN_MM inside the clear
    parenchyma. Preferred in this order: the cleanest parenchyma (DEVIATION_LEVELS), then the
    widest slab (+/- 10, 5, 0 mm). A spot whose ROI-sized mean is unlike the rest of the liver's
    (ROI_MEAN_SD) is not taken. The clearance is never reduced (a ROI touching a vessel or the
    edge biases the ECV more than a missing one does)."""
    dz, dy, dx = spacing
    nz = lm.organ.shape[0]
    depth_cache = {} if depth_cache is None else depth_cache

    reach = ROI_RADIUS_MM + LIVER_MARGIN_MM
    wall = (0, int(np.ceil((WALL_MM + reach) / dy)) + 1, int(np.ceil((WALL_MM + reach) / dx)) + 1)

    def depth(k: int, t: float) -> np.ndarray:
        if (k, t) not in depth_cache:
            d = _depth_boxed(lm.clear(k, t), dy, dx)
            if lm.fat is not None and lm.organ[k].any():  # inside the abdominal wall and diaphragm
                if ("wall", k) not in depth_cache:  # far enough from fat, within reach of the organ
                    box = bounding_box(lm.organ[k][None], wall)[1:]
                    far = np.zeros(d.shape, bool)
                    far[box] = _depth(~lm.fat[k][box], dy, dx) >= WALL_MM + reach
                    depth_cache["wall", k] = far
                d = np.where(depth_cache["wall", k], d, 0.0)
            depth_cache[k, t] = d
        return depth_cache[k, t]

    side = (1, max(1, int(round(np.sqrt(ROI_AREA_MM2) / dy))), max(1, int(round(np.sqrt(ROI_AREA_MM2) / dx))))

    def roi_means(lo: int, hi: int) -> list[np.ndarray]:
        # per value map, the mean over a ROI-sized square on each slice, averaged over the slab
        out = []
        for i, v in enumerate(lm.values):
            for k in range(lo, hi + 1):
                if ("mean", i, k) not in depth_cache:
                    depth_cache["mean", i, k] = ndimage.uniform_filter(v(k)[None], side)[0]
            out.append(np.mean([depth_cache["mean", i, k] for k in range(lo, hi + 1)], axis=0))
        return out

    def like_the_liver(ok: np.ndarray, clear_spots: np.ndarray, lo: int, hi: int) -> np.ndarray:
        if clear_spots.sum() < ROI_MEAN_MIN_SPOTS:
            return ok
        for m in roi_means(lo, hi):
            ref = m[clear_spots]
            ok = ok & (np.abs(m - np.median(ref)) <= ROI_MEAN_SD * max(liver.robust_sd(ref), 1e-6))
        return ok

    targets = _liver_targets(lm.organ[k0], x_mid, spacing)
    yy, xx = np.mgrid[:lm.organ.shape[1], :lm.organ.shape[2]]
    placed: list[PlacedMask] = []
    centres: list[tuple[int, int]] = []
    notes: list[str] = []
    for label in LIVER_LABELS:
        if label not in targets:
            notes.append(f"{label} not placed: no liver on that side of the midline at the level chosen")
            continue
        (ty, tx), allowed = targets[label]
        for cy, cx in centres:  # keep ROIs apart by a margin
            allowed = allowed & (np.hypot((yy - cy) * dy, (xx - cx) * dx) >= 2 * ROI_RADIUS_MM + LIVER_MARGIN_MM)
        d2 = ((yy - ty) * dy) ** 2 + ((xx - tx) * dx) ** 2
        found = []  # per deviation level: (distance to the target, level, slab, centre)
        for t in DEVIATION_LEVELS:
            for half in (SLAB_HALF_MM, SLAB_HALF_MM / 2.0, 0.0):
                ks = [k for k in _slab(k0, nz, dz, half) if lm.organ[k].any()]
                if k0 not in ks:
                    continue
                lo, hi = min(ks), max(ks)
                spots = np.ones(lm.organ.shape[1:], bool)
                for k in range(max(0, lo - guard), min(nz, hi + guard + 1)):
                    spots &= depth(k, t) >= reach
                    if not spots.any():
                        break
                ok = spots & allowed
                if ok.any():
                    ok = like_the_liver(ok, spots, lo, hi)
                if ok.any():
                    i = int(np.argmin(np.where(ok, d2, np.inf)))
                    found.append((float(np.sqrt(d2.flat[i])), t, lo, hi, np.unravel_index(i, d2.shape)))
                    break
        if not found:
            notes.append(f"{label} not placed: no spot of {ROI_AREA_MM2:g} mm^2 in that part of the liver "
                         f"{LIVER_MARGIN_MM:g} mm clear of its edge, vessels and lesions (3-D) near the level chosen")
            continue
        nearest = min(f[0] for f in found)
        _, t, lo, hi, (cy, cx) = next(f for f in found if f[0] <= nearest + CLEANER_DETOUR_MM)
        mask = np.zeros(lm.organ.shape, bool)
        sl = disk_mask(mask.shape[1:], cy, cx, ROI_RADIUS_MM, dy, dx)
        for k in range(lo, hi + 1):
            mask[k] = sl & lm.clear(k, t)
        placed.append(PlacedMask("liver", label, mask, ROI_RADIUS_MM, {k: (cy, cx) for k in range(lo, hi + 1)},
                                 LIVER_MARGIN_MM, ref_hu=lm.median_hu))
        centres.append((cy, cx))
    return placed, notes


def _aorta_roi(lumen: dict[int, Lumen], k0: int, shape, spacing) -> tuple[PlacedMask | None, str | None]:
    dz, dy, dx = spacing
    ks = [k for k in _slab(k0, shape[0], dz, SLAB_HALF_MM) if k in lumen]
    if not ks:  # no lumen at the liver level: the nearest slices where it was found
        nearest = min(lumen, key=lambda k: abs(k - k0))
        ks = [k for k in _slab(nearest, shape[0], dz, SLAB_HALF_MM) if k in lumen]
    mask = np.zeros(shape, bool)
    centres, radii = {}, []
    for k in ks:
        lu = lumen[k]
        radius = min(ROI_RADIUS_MM, lu.depth_mm - AORTA_WALL_MARGIN_MM)
        if radius < MIN_ROI_RADIUS_MM:
            continue
        mask[k] = disk_mask(shape[1:], int(round(lu.cy)), int(round(lu.cx)), radius, dy, dx) & lu.mask
        centres[k] = (lu.cy, lu.cx)
        radii.append(radius)
    if not mask.any():
        return None, (f"aorta not placed: lumen too narrow for a {MIN_ROI_RADIUS_MM:g} mm ROI "
                      f"{AORTA_WALL_MARGIN_MM:g} mm from its wall")
    blood = float(np.median([lumen[k].median_hu for k in centres]))
    return PlacedMask("aorta", "aorta", mask, min(radii), centres, AORTA_WALL_MARGIN_MM, ref_hu=blood,
                      band_above_hu=CALCIUM_ABOVE_LUMEN_HU), None


def ct_roi_masks(hu: np.ndarray, spacing, avoid: np.ndarray | None = None, unenhanced: np.ndarray | None = None,
                 vessels: np.ndarray | None = None) -> tuple[list[PlacedMask], list[str]]:
    """Automatic CT ROIs on an LPS-ordered HU volume [z, y, x] with spacing (dz, dy, dx) mm:
    aorta, 'liver right anterior', 'liver right posterior', 'liver left lateral', 'erector spinae';
    none touches `avoid` (bool, same shape). `unenhanced`, the unenhanced phase registered onto
    the same grid, helps tell the liver from touching organs (its enhancement). `vessels`, another
    enhanced phase on the same grid (the portal venous phase, where the intrahepatic veins are
    brightest), keeps the liver ROIs clear of what departs from parenchyma there as well: at
    equilibrium the veins read only 10-40 HU above parenchyma, within a noisy scan's spread.
    Returns the masks and notes on what is missing.

    The search runs on a reduced copy (slices about 5 mm apart, pixels of at least 1.5 mm, block
    means), which is enough to find organs and places; each ROI is then painted on every slice of
    its slab at full resolution where its clearance disk is still in the expected tissue (liver
    parenchyma, blood, muscle) and clear of `avoid`; with `unenhanced`, no aortic ROI slice has
    calcium (anatomy.CALCIUM_UNENHANCED_HU before contrast) within its clearance."""
    if avoid is not None and avoid.shape != hu.shape:
        raise ValueError(f"avoid mask shape {avoid.shape} differs from the volume's {hu.shape}")
    grid = _Reduced(hu.shape, spacing)
    if unenhanced is not None and unenhanced.shape != hu.shape:
        raise ValueError(f"unenhanced shape {unenhanced.shape} differs from the volume's {hu.shape}")
    if vessels is not None and vessels.shape != hu.shape:
        raise ValueError(f"vessels shape {vessels.shape} differs from the volume's {hu.shape}")
    coarse, notes = _search_ct(grid.reduce(hu), grid.spacing, None if avoid is None else grid.reduce_mask(avoid),
                               None if unenhanced is None else grid.reduce(unenhanced),
                               z_guard(LIVER_MARGIN_MM, spacing[0], grid.zstep),
                               None if vessels is None else grid.reduce(vessels))
    placed = []
    cache: dict[int, np.ndarray] = {}

    def smooth(k: int) -> np.ndarray:
        # lighter smoothing than the search (and none forced on coarse pixels): the clearance
        # disk must not see through its own rim; the band widens with the noise left
        if k not in cache:
            cache[k] = _smooth(hu[k:k + 1], spacing, SMOOTH_MM / 2.0, min_px=0.0)[0]
        return cache[k]

    def before(k: int, ys: slice, xs: slice) -> np.ndarray | None:
        # the unenhanced phase around (ys, xs) on slice k, smoothed as `smooth` (None without one)
        if unenhanced is None:
            return None
        pad = 4 * int(np.ceil(SMOOTH_MM / 2.0 / min(spacing[1:]))) + 1
        y0, x0 = max(0, ys.start - pad), max(0, xs.start - pad)
        win = _smooth(unenhanced[k:k + 1, y0:ys.stop + pad, x0:xs.stop + pad], spacing, SMOOTH_MM / 2.0, min_px=0.0)[0]
        return win[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]

    for p in coarse:
        fine = _paint_fine(p, grid, hu.shape, spacing, smooth, avoid, before)
        if fine is None:
            notes.append(f"{p.label} not placed: its place found on the reduced image is not clear at full resolution")
        else:
            placed.append(fine)
    return placed, notes


class _Reduced:
    """The reduced search grid: means of `zstep` slices (about SEARCH_SLICE_MM: image noise, which
    is independent from slice to slice, drops by sqrt(zstep) while organs and vessels several mm
    across stay) and of `f` x `f` pixel blocks."""

    def __init__(self, shape, spacing):
        dz, dy, dx = spacing
        self.shape = shape
        self.zstep = max(1, int(round(SEARCH_SLICE_MM / dz))) if dz > 0 else 1
        self.f = max(1, int(np.floor(SEARCH_PIXEL_MM / max(dy, dx))))
        self.spacing = (dz * self.zstep, dy * self.f, dx * self.f)

    def reduce(self, hu: np.ndarray) -> np.ndarray:
        f = self.f
        if self.zstep == 1:
            a = hu
        else:
            nzc = len(range(0, self.shape[0], self.zstep))
            a = np.stack([hu[r.start:r.stop].mean(axis=0, dtype=np.float32)
                          for r in map(self.fine_slices, range(nzc))])
        if f == 1:
            return a
        ny, nx = (a.shape[1] // f) * f, (a.shape[2] // f) * f
        return a[:, :ny, :nx].reshape(a.shape[0], ny // f, f, nx // f, f).mean(axis=(2, 4), dtype=np.float32)

    def reduce_mask(self, mask: np.ndarray) -> np.ndarray:
        """True where any voxel of the block (the slices a reduced slice stands for, f x f pixels) is."""
        nzc = len(range(0, self.shape[0], self.zstep))
        slab = np.stack([mask[self.fine_slices(kc).start:self.fine_slices(kc).stop].any(axis=0) for kc in range(nzc)])
        if self.f == 1:
            return slab
        f = self.f
        ny, nx = (slab.shape[1] // f) * f, (slab.shape[2] // f) * f
        return slab[:, :ny, :nx].reshape(nzc, ny // f, f, nx // f, f).any(axis=(2, 4))

    def fine_slices(self, kc: int) -> range:
        """Full-resolution slices represented by reduced slice `kc`."""
        lo = kc * self.zstep - (self.zstep - 1) // 2
        return range(max(0, lo), min(self.shape[0], lo + self.zstep))

    def fine_centre(self, cy: float, cx: float) -> tuple[int, int]:
        f = self.f
        return int(round(cy * f + (f - 1) / 2.0)), int(round(cx * f + (f - 1) / 2.0))


def _paint_fine(p: PlacedMask, grid: _Reduced, shape, spacing, smooth, avoid, before=None) -> PlacedMask | None:
    """`p` (placed on the reduced grid) painted at full resolution on each slice of its slab where
    the disk of radius + clearance lies in the HU band of its tissue and clear of `avoid`."""
    _, dy, dx = spacing
    slices = {k: grid.fine_centre(*p.centres[kc]) for kc in p.centres for k in grid.fine_slices(kc)}
    reach = p.radius_mm + p.clearance_mm
    ry, rx = int(reach / dy) + 1, int(reach / dx) + 1
    around = {}
    for k, (cy, cx) in slices.items():
        ys, xs = slice(max(0, cy - ry), cy + ry + 1), slice(max(0, cx - rx), cx + rx + 1)
        yy, xx = np.ogrid[ys, xs]
        around[k] = (ys, xs, ((yy - cy) * dy) ** 2 + ((xx - cx) * dx) ** 2 < reach * reach)
    if p.band is not None:
        lo, hi = p.band
    else:
        # Liver and blood: the reference HU +/- the deviation threshold at this resolution's noise
        # (robust SD over all clearance disks: a vessel or edge in a few of them does not count).
        noise = liver.robust_sd(np.concatenate([smooth(k)[ys, xs][m] for k, (ys, xs, m) in around.items()]))
        width = max(DEVIATION_HU, DEVIATION_NOISE_SD * noise)
        lo, hi = p.ref_hu - width, p.ref_hu + (p.band_above_hu if p.band_above_hu is not None else width)
    mask = np.zeros(shape, bool)
    centres = {}
    searched = set(p.centres) if grid.f == 1 and grid.zstep == 1 else set()
    for k, (cy, cx) in slices.items():
        ys, xs, m = around[k]
        if avoid is not None and avoid[k][ys, xs][m].any():
            continue
        pre = before(k, ys, xs) if p.role == "aorta" and before is not None else None
        if pre is not None and pre[m].max() >= CALCIUM_UNENHANCED_HU:
            continue  # calcium (or what is not blood) near the aortic ROI, seen before contrast
        values = smooth(k)[ys, xs][m]
        # a slice the search saw at full resolution is placed as the search placed it
        if k not in searched and (values.min() < lo or values.max() > hi):
            continue
        mask[k] = disk_mask(shape[1:], cy, cx, p.radius_mm, dy, dx)
        centres[k] = (cy, cx)
    if not centres:
        return None
    return PlacedMask(p.role, p.label, mask, p.radius_mm, centres, p.clearance_mm, p.band, p.ref_hu, p.band_above_hu)


def _search_ct(hu: np.ndarray, spacing, avoid: np.ndarray | None, unenhanced: np.ndarray | None = None,
               guard: int = 0, vessels: np.ndarray | None = None) -> tuple[list[PlacedMask], list[str]]:
    """The placement itself (on the reduced grid): see `ct_roi_masks`; `guard`: see `z_guard`."""
    notes: list[str] = []
    placed: list[PlacedMask] = []
    body = body_mask(hu)
    if not body.any():
        return [], ["no ROI placed: no body in the image (nothing above -500 HU)"]
    spine = find_spine(hu, spacing, body)
    lumen = aortic_lumen(hu, spacing, body, spine, unenhanced) if spine.found else {}
    if not spine.found:
        notes.append("aorta not placed: no vertebral body found (the aorta is searched anterior-left of it)")
    elif not lumen:
        notes.append("aorta not placed: no enhanced round lumen anterior-left of the spine on enough slices "
                     "(unenhanced series, or no aorta in the field)")
    if lumen and avoid is not None:
        for lu_k, lu in lumen.items():
            lu.mask &= ~avoid[lu_k]
    lm, why_not = liver_map(hu, spacing, body, spine, avoid, unenhanced, enhanced=bool(lumen), vessels=vessels)
    if lm is None:
        notes.append("liver ROIs not placed: no liver found"
                     + (f" ({'; '.join(why_not)})" if why_not else ""))

    def x_mid(k: int) -> float:
        if np.isfinite(spine.x[k]):
            return float(spine.x[k])
        if body[k].any():
            return float(np.nonzero(body[k])[1].mean())
        return hu.shape[2] / 2.0

    level = None
    if lm is not None:
        got, why, level = _liver_level(lm, lumen, x_mid, spacing, guard)
        placed.extend(got)
        notes.extend(why)
    if level is not None:
        k0 = level
    elif lumen:
        k0 = int(np.median(sorted(lumen)))
    else:
        k0 = int(np.nanargmax(body.sum(axis=(1, 2))))
    if lumen:
        roi, why = _aorta_roi(lumen, k0, hu.shape, spacing)
        if roi is not None:
            placed.append(roi)
        else:
            notes.append(why)
    muscle, why = _ct_muscle(hu, spacing, body, spine, k0, avoid)
    if muscle is not None:
        placed.append(muscle)
    else:
        notes.append(why)
    return placed, notes


def _ct_muscle(hu, spacing, body, spine: Spine, k0: int, avoid) -> tuple[PlacedMask | None, str | None]:
    dz, dy, dx = spacing
    smooth = _smooth(hu, spacing, SMOOTH_MM / 2.0)
    mask = np.zeros(hu.shape, bool)
    centres, radii = {}, []
    for k in _slab(k0, hu.shape[0], dz, SLAB_HALF_MM):
        tissue = body[k] & (smooth[k] > MUSCLE_HU[0]) & (smooth[k] < MUSCLE_HU[1])
        if avoid is not None:
            tissue &= ~avoid[k]
        mid = spine.x[k] if np.isfinite(spine.x[k]) else (np.nonzero(body[k])[1].mean() if body[k].any() else None)
        if mid is None:
            continue
        # behind the vertebral body's middle, where the liver does not reach
        behind = spine.anterior_y[k] + VERTEBRAL_MID_MM / dy if np.isfinite(spine.anterior_y[k]) else None
        found = erector_spinae(tissue, body[k], float(mid), (dy, dx), behind)
        if found is not None:
            cy, cx, radius = found
            mask[k] = disk_mask(hu.shape[1:], cy, cx, radius, dy, dx) & tissue
            centres[k] = (cy, cx)
            radii.append(radius)
    if not mask.any():
        return None, ("erector spinae not placed: no muscle beside the spine in the posterior half of the body "
                      f"thick enough for a {MIN_ROI_RADIUS_MM:g} mm ROI")
    return PlacedMask("muscle", "erector spinae", mask, min(radii), centres, MUSCLE_MARGIN_MM, band=MUSCLE_HU), None


# ---------------------------------------------------------------- CT: inside a site's organ masks

# A whole-organ mask from a site's segmentation tool (hccnode.imaging.organ_masks) replaces the
# finding of the organ, never the ROI rules: the same liver, aortic and muscle ROIs, placed by the
# same helpers. The work is done on the organs' box widened by this margin (mm), room for the
# in-plane smoothing; the midline is read on the whole slice.
ORGAN_BOX_MARGIN_MM = 15.0


def place_ct_rois_in_organs(volume: Volume, organs: dict[str, sitk.Image],
                            avoid: sitk.Image | None = None) -> Placement:
    """Paper 001's ROIs on a CT phase inside given organ masks ({"liver" | "aorta" | "muscle":
    mask on any grid; resampled onto the volume's}); no ROI touches `avoid`. Roles without a
    mask are not placed (the caller finds those organs otherwise)."""
    _check_ct(volume)
    arr, spacing, order = _lps_array(volume)
    masks = {role: order.apply(_on_grid(mask, volume) > 0) for role, mask in organs.items()}
    avoid_lps = None if avoid is None else order.apply(_on_grid(avoid, volume) > 0)
    placed, notes = ct_roi_masks_in_organs(arr, spacing, masks, avoid_lps)
    return _placement(placed, notes, volume, order)


def _check_ct(volume: Volume) -> None:
    if volume.modality not in (None, "", "CT"):
        raise ValueError(f"series {volume.series_number}: automatic CT ROIs need a CT series, got {volume.modality}")
    if volume.rescale_type not in (None, "", "HU"):
        raise ValueError(f"series {volume.series_number}: values are {volume.rescale_type!r}, not HU")


def ct_roi_masks_in_organs(hu: np.ndarray, spacing, organs: dict[str, np.ndarray],
                           avoid: np.ndarray | None = None) -> tuple[list[PlacedMask], list[str]]:
    """`ct_roi_masks` inside given organ masks (bool, LPS, shape of `hu`): three liver ROIs in
    "liver" (organ = the mask, holes filled; parenchyma = the mask minus vessels and lesions by
    the deviation rule of `liver_map`, minus `avoid`), the aortic ROI in the lumen within
    "aorta" (wall thrombus and calcium cut out by the same rule), the erector spinae ROI in
    "muscle"; at the liver's level as `ct_roi_masks` chooses it. Masks and notes."""
    for role, mask in organs.items():
        if role not in ("liver", "aorta", "muscle"):
            raise ValueError(f"no ROI rule for an organ mask of role {role!r}")
        if mask.shape != hu.shape:
            raise ValueError(f"{role} mask shape {mask.shape} differs from the volume's {hu.shape}")
    if avoid is not None and avoid.shape != hu.shape:
        raise ValueError(f"avoid mask shape {avoid.shape} differs from the volume's {hu.shape}")
    organs = {role: m for role, m in organs.items() if m.any()}
    if not organs:
        return [], ["no ROI placed in the organ masks: they hold no voxel of this series"]
    box = _organ_box(organs, spacing)
    sub = hu[box]
    parts = {role: m[box] for role, m in organs.items()}
    sub_avoid = None if avoid is None else avoid[box]
    placed: list[PlacedMask] = []
    notes: list[str] = []
    lumen = _lumen_in_mask(sub, spacing, parts["aorta"], sub_avoid) if "aorta" in parts else {}
    if "aorta" in parts and not lumen:
        notes.append("aorta not placed: the aorta mask holds no lumen of blood attenuation")
    k0 = None
    if "liver" in parts:
        lm = _liver_map_in_mask(sub, spacing, parts["liver"], sub_avoid)
        got, why, k0 = _liver_level(lm, lumen, lambda k: _midline(hu[box[0]][k], spacing) - box[2].start, spacing,
                                    z_guard(LIVER_MARGIN_MM, spacing[0], 1))
        placed += got
        notes += why
    if k0 is None:
        k0 = int(np.median(sorted(lumen))) if lumen else int(np.argmax(sum(parts.values()).sum(axis=(1, 2))))
    if lumen:
        roi, why = _aorta_roi(lumen, k0, sub.shape, spacing)
        placed += [roi] if roi is not None else []
        notes += [why] if why else []
    if "muscle" in parts:
        roi, why = _muscle_in_mask(sub, spacing, parts["muscle"], k0, sub_avoid)
        placed += [roi] if roi is not None else []
        notes += [why] if why else []
    return [_unboxed(p, box, hu.shape) for p in placed], notes


def _organ_box(organs: dict[str, np.ndarray], spacing) -> tuple[slice, ...]:
    """The organs' bounding box: their slices, and in-plane widened by ORGAN_BOX_MARGIN_MM."""
    _, dy, dx = spacing
    margin = (0, int(np.ceil(ORGAN_BOX_MARGIN_MM / dy)), int(np.ceil(ORGAN_BOX_MARGIN_MM / dx)))
    return bounding_box(np.logical_or.reduce(list(organs.values())), margin)


def _unboxed(p: PlacedMask, box, shape) -> PlacedMask:
    mask = np.zeros(shape, bool)
    mask[box] = p.mask
    z0, y0, x0 = (s.start for s in box)
    centres = {k + z0: (cy + y0, cx + x0) for k, (cy, cx) in p.centres.items()}
    return dataclasses.replace(p, mask=mask, centres=centres)


def _midline(hu2d: np.ndarray, spacing) -> float:
    """Column of the body's midline on one full slice: the vertebral body's, else the body's centre."""
    body = body_mask(hu2d[None])
    spine = find_spine(hu2d[None], spacing, body)
    if np.isfinite(spine.x[0]):
        return float(spine.x[0])
    return float(np.nonzero(body[0])[1].mean()) if body.any() else hu2d.shape[1] / 2.0


def _depth_boxed(mask2d: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """`_depth` computed in the mask's bounding box only (the same values: outside it, 0)."""
    out = np.zeros(mask2d.shape)
    box = bounding_box(mask2d, 0)
    if box is not None:
        out[box] = _depth(mask2d[box], dy, dx)
    return out


def _parenchyma(values: np.ndarray) -> tuple[float, float]:
    """Median and deviation threshold (HU) of smoothed tissue values: see DEVIATION_HU."""
    return float(np.median(values)), max(DEVIATION_HU, DEVIATION_NOISE_SD * liver.robust_sd(values))


def _liver_map_in_mask(hu: np.ndarray, spacing, liver: np.ndarray, avoid: np.ndarray | None) -> LiverMap:
    """A LiverMap from a liver mask: organ = the mask with holes filled per slice; median and
    threshold from the smoothed mask at least LIVER_MARGIN_MM inside its edge (the whole mask if
    none is); deviation from it over the mask, minus `avoid`."""
    _, dy, dx = spacing
    smooth = _smooth(hu, spacing, SMOOTH_MM)
    organ = np.zeros_like(liver)
    core = np.zeros_like(liver)
    for k in range(liver.shape[0]):
        if liver[k].any():
            organ[k] = fill_holes_2d(liver[k])
            core[k] = _depth_boxed(liver[k], dy, dx) >= LIVER_MARGIN_MM
    deviation, median, scale = _deviation(smooth, core if core.any() else liver,
                                          liver if avoid is None else liver & ~avoid)
    return LiverMap(organ, deviation, median, DEVIATION_NOISE_SD * scale, [lambda k: hu[k]])


def _liver_level(lm: LiverMap, lumen: dict, x_mid, spacing, guard: int = 0
                 ) -> tuple[list[PlacedMask], list[str], int | None]:
    """The three liver ROIs at the level `ct_roi_masks` would take: of the largest liver
    cross-sections, those with an aortic lumen first (paper 001: the aorta "at the same level"),
    the first where all three fit, else the one where most do. (ROIs, notes, level)."""
    area = lm.organ.sum(axis=(1, 2))
    order = [int(k) for k in np.argsort(-area, kind="stable") if area[k] > 0]
    order = [k for k in order if k in lumen] + [k for k in order if k not in lumen]
    best: tuple[list[PlacedMask], list[str], int | None] = ([], ["liver ROIs not placed: the liver mask is empty"],
                                                            None)
    cache: dict[int, np.ndarray] = {}
    for k0 in order[:LEVEL_CANDIDATES]:
        got, why = _place_liver_rois(lm, k0, x_mid(k0), spacing, guard, cache)
        if best[2] is None or len(got) > len(best[0]):
            best = (got, why, k0)
        if len(got) == len(LIVER_LABELS):
            break
    return best


def _lumen_in_mask(hu: np.ndarray, spacing, aorta: np.ndarray, avoid: np.ndarray | None) -> dict[int, Lumen]:
    """Per slice, the aortic lumen inside an aorta mask (which may hold wall, thrombus and
    calcium): the mask's voxels within the deviation threshold of the blood's median (thrombus
    reads lower, calcium higher), calcium (CALCIUM_ABOVE_LUMEN_HU above the median, as
    `aortic_lumen` cuts it) and its rim removed; the largest component, its deepest point."""
    _, dy, dx = spacing
    smooth = _smooth(hu, spacing, SMOOTH_MM / 2.0, min_px=0.0)
    core = np.zeros_like(aorta)
    for k in range(aorta.shape[0]):
        if aorta[k].any():
            core[k] = _depth_boxed(aorta[k], dy, dx) >= AORTA_WALL_MARGIN_MM
    median, threshold = _parenchyma(smooth[core if core.any() else aorta])
    out: dict[int, Lumen] = {}
    for k in range(aorta.shape[0]):
        calcium = ndimage.binary_dilation(aorta[k] & (hu[k] > median + CALCIUM_ABOVE_LUMEN_HU))
        blood = aorta[k] & (np.abs(smooth[k] - median) <= threshold) & ~calcium
        if avoid is not None:
            blood &= ~avoid[k]
        lab, n = ndimage.label(blood)
        if n == 0:
            continue
        comp = lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
        depth = _depth_boxed(comp, dy, dx)
        cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
        out[k] = Lumen(float(cy), float(cx), float(depth[cy, cx]), float(np.sqrt(comp.sum() * dy * dx / np.pi)),
                       float(np.median(hu[k][comp])), comp)
    return out


def _muscle_in_mask(hu: np.ndarray, spacing, muscle: np.ndarray, k0: int,
                    avoid: np.ndarray | None) -> tuple[PlacedMask | None, str | None]:
    """The erector spinae ROI in a muscle mask, on the slab around level `k0`: per slice a disk
    at the deepest point of the mask's muscle-attenuation voxels (of the thicker side), radius
    up to 100 mm^2 and MUSCLE_MARGIN_MM inside the muscle."""
    dz, dy, dx = spacing
    smooth = _smooth(hu, spacing, SMOOTH_MM / 2.0)
    mask = np.zeros(hu.shape, bool)
    centres, radii = {}, []
    for k in _slab(k0, hu.shape[0], dz, SLAB_HALF_MM):
        tissue = muscle[k] & (smooth[k] > MUSCLE_HU[0]) & (smooth[k] < MUSCLE_HU[1])
        if avoid is not None:
            tissue &= ~avoid[k]
        depth = _depth_boxed(tissue, dy, dx)
        radius = min(ROI_RADIUS_MM, float(depth.max(initial=0.0)) - MUSCLE_MARGIN_MM)
        if radius < MIN_ROI_RADIUS_MM:
            continue
        cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
        mask[k] = disk_mask(hu.shape[1:], int(cy), int(cx), radius, dy, dx) & tissue
        centres[k] = (float(cy), float(cx))
        radii.append(radius)
    if not mask.any():
        return None, (f"erector spinae not placed: the muscle mask is nowhere thick enough for a "
                      f"{MIN_ROI_RADIUS_MM:g} mm ROI {MUSCLE_MARGIN_MM:g} mm inside it near the liver's level")
    return PlacedMask("muscle", "erector spinae", mask, min(radii), centres, MUSCLE_MARGIN_MM, band=MUSCLE_HU), None


# ---------------------------------------------------------------- erector spinae (CT and MR)

def erector_spinae(tissue: np.ndarray, body: np.ndarray, x_mid: float, spacing2,
                   y_min: float | None = None) -> tuple[int, int, float] | None:
    """(row, column, ROI radius mm) of an erector spinae ROI on one LPS slice, or None.

    `tissue`: bool mask of the muscle-like class (CT: muscle HU; MR: homogeneous regions). The
    erector spinae is the most posterior component beside the spinous process (8-80 mm from the
    midline, posterior half of the body, behind row `y_min` when given) that lies mostly inside
    that window and does not touch the skin; of the two sides, the thicker one. When muscles
    with no fat plane between them form one component reaching out of the window, its part in
    the window is used. ROI radius: 100 mm^2 or less, 3 mm inside the muscle."""
    dy, dx = spacing2
    if not body.any():
        return None
    yy, xx = np.mgrid[:body.shape[0], :body.shape[1]]
    rows = np.nonzero(body.any(axis=1))[0]
    y_centre = (rows.min() + rows.max()) / 2.0
    if y_min is not None:
        y_centre = max(y_centre, y_min)
    lateral = np.abs(xx - x_mid) * dx
    window = body & (yy >= y_centre) & (lateral >= MIDLINE_GAP_MM) & (lateral <= PARASPINAL_MAX_MM)
    inner = _depth(body, dy, dx) > SKIN_MM
    lab, n = ndimage.label(tissue & body & (lateral >= MIDLINE_GAP_MM))
    if n == 0:
        return None
    need = MIN_ROI_RADIUS_MM + MUSCLE_MARGIN_MM
    best_side: dict[tuple[bool, int], tuple] = {}
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[sl] == i
        inside = comp & window[sl]
        if not inside.any() or (comp & ~inner[sl]).any():
            continue
        whole = inside.sum() >= WINDOW_FRACTION * comp.sum()
        part = comp if whole else inside
        depth = np.where(inside, _depth(part, dy, dx), 0.0)
        if depth.max() < need:
            continue
        cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
        cy, cx = cy + sl[0].start, cx + sl[1].start
        centroid_y = np.nonzero(part)[0].mean() + sl[0].start
        key = (whole, 1 if cx > x_mid else -1)
        cand = (centroid_y, float(depth.max()), cy, cx)
        if key not in best_side or cand[0] > best_side[key][0]:  # the most posterior one
            best_side[key] = cand
    # components lying in the window win over parts of larger ones
    found = [c for (whole, _), c in best_side.items() if whole] or list(best_side.values())
    if not found:
        return None
    _, d, cy, cx = max(found, key=lambda c: c[1])
    return int(cy), int(cx), float(min(ROI_RADIUS_MM, d - MUSCLE_MARGIN_MM))


# ---------------------------------------------------------------- MR

def mr_body_mask(img: np.ndarray, spacing) -> np.ndarray:
    """Body on MR magnitude images: above the background by 6 of its robust SDs (background read
    in the slice corners, air in an abdominal field of view), largest component per slice,
    holes filled (fat-suppressed or fluid-dark regions inside stay in)."""
    smooth = _smooth(img, spacing, SMOOTH_MM / 2.0)
    nz, ny, nx = img.shape
    cy, cx = max(2, ny // 12), max(2, nx // 12)
    corners = np.concatenate([smooth[:, :cy, :cx].ravel(), smooth[:, :cy, -cx:].ravel(),
                              smooth[:, -cy:, :cx].ravel(), smooth[:, -cy:, -cx:].ravel()])
    level = float(np.median(corners)) + 6.0 * max(liver.robust_sd(corners), 1e-6)
    out = np.zeros(img.shape, bool)
    for k in range(nz):
        lab, n = ndimage.label(smooth[k] > level)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())[1:]
        out[k] = fill_holes_2d(lab == (int(np.argmax(sizes)) + 1))
    return out


def homogeneous_regions(img: np.ndarray, spacing, body: np.ndarray) -> np.ndarray:
    """Pixels whose neighbourhood (about 4 mm) varies no more than twice the image noise: tissue
    interiors, split from each other by their edges. Noise is the robust SD of neighbour
    differences inside the body (the flat majority of pixels), so it needs no units."""
    _, dy, dx = spacing
    f = img.astype(np.float64)
    diffs = np.diff(f, axis=2)[body[:, :, 1:] & body[:, :, :-1]]
    noise = liver.robust_sd(diffs) / np.sqrt(2.0) if diffs.size else 0.0
    if noise <= 0:
        noise = max(float(np.std(f[body])) * 1e-3, 1e-6)
    size = (1, 2 * max(1, int(round(2.0 / dy))) + 1, 2 * max(1, int(round(2.0 / dx))) + 1)
    mean = ndimage.uniform_filter(f, size=size)
    var = np.maximum(ndimage.uniform_filter(f * f, size=size) - mean * mean, 0.0)
    return body & (np.sqrt(var) <= 2.0 * noise)


def mr_muscle_mask(img: np.ndarray, spacing) -> tuple[list[PlacedMask], list[str]]:
    """Erector spinae ROI on an LPS-ordered T2-weighted volume: on every slice where the muscle
    is found (paper 003 uses the tumor's slice; a caller keeps that one). Masks and notes."""
    _, dy, dx = spacing
    body = mr_body_mask(img, spacing)
    if not body.any():
        return [], ["erector spinae not placed: no body above the background signal"]
    tissue = homogeneous_regions(img, spacing, body)
    # Midline: the body's left-right centre, the same on all slices (no bone to find on MR).
    xs = [np.nonzero(body[k])[1] for k in range(img.shape[0]) if body[k].any()]
    x_mid = float(np.median([(x.min() + x.max()) / 2.0 for x in xs]))
    mask = np.zeros(img.shape, bool)
    for k in range(img.shape[0]):
        found = erector_spinae(tissue[k], body[k], x_mid, (dy, dx))
        if found is not None:
            cy, cx, radius = found
            mask[k] = disk_mask(img.shape[1:], cy, cx, radius, dy, dx) & tissue[k]
    if not mask.any():
        return [], ["erector spinae not placed: no homogeneous muscle beside the midline in the posterior half "
                    f"of the body thick enough for a {MIN_ROI_RADIUS_MM:g} mm ROI"]
    return [PlacedMask("muscle", "erector spinae", mask)], []
