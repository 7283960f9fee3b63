"""Finding the body, the spine, the aorta and a liver sample region in an axial CT volume.

Pure functions on a HU volume; nothing here reads files. Used by phase confirmation
(hccnode.imaging.phases) and by the automatic ROIs (hccnode.imaging.auto_rois).

Conventions
-----------
* `hu` is a float array indexed [z, y, x] (slice, row, column) in Hounsfield units.
* In-plane axes follow DICOM LPS: column index x increases towards the patient's Left, row index
  y increases towards Posterior (the standard axial display of a supine patient). `to_lps()`
  brings other axial orientations (prone, feet-first, flipped) to this one, `from_lps()` back;
  `image_lps_order()` does the same for any storage order of a SimpleITK image (coronal or
  sagittal planes too). z order is free.
* `spacing` is (dz, dy, dx) in mm. Areas are mm^2, distances mm, centroids are given both as
  fractional indices (z, y, x) and in mm from the volume's first voxel.

Anatomical priors (not tuned to any phantom): the vertebral body is the most posterior large
bone structure near the midline; the abdominal aorta lies just anterior to the vertebral body,
slightly to the patient's left, round, 15-35 mm wide; with intravenous contrast it is brighter
than soft tissue, without it it is found by its position against the spine. The liver is the
largest soft-tissue organ on the patient's right. Statistics are medians / median absolute
deviations so that vessels, tumors and noise do not move them much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage

BODY_HU = -500.0           # air / body boundary
BONE_HU = 200.0            # cortical and dense cancellous bone
ENHANCED_BLOOD_HU = 90.0   # intravenous iodine lifts blood (about 40 HU) above this
AORTA_THRESHOLDS_HU = (ENHANCED_BLOOD_HU, 110.0, 125.0, 140.0, 160.0, 200.0, 250.0)
AORTA_DIAMETER_MM = (12.0, 40.0)
# Expected aorta centre relative to the vertebral body: x from its midline (towards Left),
# y in front of its anterior cortex (towards Anterior), and the search window around it.
AORTA_OFFSET_MM = (15.0, 15.0)
AORTA_WINDOW_MM = ((-25.0, 50.0), (-2.0, 70.0))
ROI_RADIUS_MM = 5.0
# A lumen's rim reads lower than its centre (partial volume); a rim this much brighter than the
# inside is cortical bone around marrow or a calcified wall, hundreds of HU denser.
RIM_EXCESS_HU = 50.0
# Calcified plaque is denser than contrast-filled blood by far more than noise can reach
# (plaque several hundred HU; Agatston's 130 HU threshold is for unenhanced blood at ~40 HU).
# On a portal venous / equilibrium phase (lumen 130-200 HU) lumen + 100 HU lies at or below the
# fixed 300 HU threshold that best reproduced the unenhanced Agatston score of the aorta in the
# venous phase of 1125 triphasic CT angiograms ("Improving aortic calcium assessment in
# contrast-enhanced CT: exploring Hounsfield Unit thresholds for cardiovascular scoring", 2026,
# PubMed; 800-900 HU were needed in the arterial phase, where the lumen itself reaches 300-400 HU).
CALCIUM_ABOVE_LUMEN_HU = 100.0
# On a registered unenhanced phase calcium is what reaches Agatston's threshold, 130 HU (Agatston
# AS et al., J Am Coll Cardiol 1990;15:827-832; unenhanced blood reads 30-60 HU). Low-density
# calcified plaque (means near 180-210 HU unenhanced: PLoS One 2015;10:e0131254) reads within the
# enhanced lumen's range and only the unenhanced phase shows it. A "lumen" brighter than this
# before contrast is not blood (oral contrast in bowel, bone).
CALCIUM_UNENHANCED_HU = 130.0
# Between aorta candidates, distance from the expected position decides; 20 HU of brightness
# weigh like 1 mm, so only near-ties go to the brighter (arterial) structure.
BRIGHTNESS_HU_PER_MM = 20.0
# The lumen must be found on a third of the slices with a spine (a structure found on a few slices
# is something else: bowel, a vessel crossing); with a registered unenhanced phase, whose blood
# attenuation confirms every candidate, 40 mm of found slices suffice (some 2-3 vertebral levels
# of a tube that runs the whole abdomen).
AORTA_MIN_TRACK_MM = 40.0
# Vertebral bodies are 25-35 mm deep (thoracolumbar); their middle is about 20 mm behind the
# anterior cortex. The liver's centroid lies in front of it, the erector spinae's far behind.
VERTEBRAL_MID_MM = 20.0


@dataclass
class Region:
    """A found structure: voxel mask, centroid, and HU statistics over the mask."""

    name: str
    mask: np.ndarray                         # bool [z, y, x]
    centroid_index: tuple[float, float, float]
    centroid_mm: tuple[float, float, float]
    mean_hu: float
    median_hu: float
    sd_hu: float
    voxels: int
    method: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LpsOrder:
    """How an array's axes map to [z, y, x] with x towards patient Left and y towards Posterior.

    `axes[i]` is the source array axis that becomes axis i (0: the head-foot axis, 1: the
    anterior-posterior axis, 2: the right-left axis); `flip_y` / `flip_x` reverse the in-plane
    axes after that. The head-foot order is left as it is (z order is free)."""

    axes: tuple[int, int, int]
    flip_y: bool
    flip_x: bool

    def apply(self, volume: np.ndarray) -> np.ndarray:
        v = np.transpose(volume, self.axes)
        if self.flip_y:
            v = v[:, ::-1, :]
        if self.flip_x:
            v = v[:, :, ::-1]
        return v

    def invert(self, lps: np.ndarray) -> np.ndarray:
        """The inverse of `apply`: an [z, y, x] LPS array back in the source array's order."""
        v = lps
        if self.flip_x:
            v = v[:, :, ::-1]
        if self.flip_y:
            v = v[:, ::-1, :]
        return np.transpose(v, np.argsort(self.axes))

    def spacing(self, array_spacing) -> tuple[float, float, float]:
        """(dz, dy, dx) from the source array's per-axis spacing."""
        return tuple(float(array_spacing[a]) for a in self.axes)


def lps_order(axis_directions) -> LpsOrder:
    """`axis_directions[a]`: the patient (LPS) direction of increasing index along array axis a.

    Each axis must lie within about 45 degrees of a distinct patient axis; raises ValueError for
    an oblique orientation where that is ambiguous."""
    dirs = [np.asarray(d, float) for d in axis_directions]
    patient = [int(np.argmax(np.abs(d))) for d in dirs]
    if sorted(patient) != [0, 1, 2] or any(abs(d[p]) < 0.7 for d, p in zip(dirs, patient)):
        raise ValueError("oblique image orientation: array axes do not follow the patient axes")
    by_patient = {p: a for a, p in enumerate(patient)}
    axes = (by_patient[2], by_patient[1], by_patient[0])
    return LpsOrder(axes, dirs[axes[1]][1] < 0, dirs[axes[2]][0] < 0)


def _axial_order(row_cosines, column_cosines) -> LpsOrder:
    r = np.asarray(row_cosines, float)
    c = np.asarray(column_cosines, float)
    ri, ci = int(np.argmax(np.abs(r))), int(np.argmax(np.abs(c)))
    if {ri, ci} != {0, 1} or abs(r[ri]) < 0.7 or abs(c[ci]) < 0.7:
        raise ValueError("not an axial image orientation")
    # array axes of an image stack: 0 slices (normal), 1 rows (column cosines), 2 columns (row cosines)
    return lps_order([np.cross(r, c), c, r])


def to_lps(volume: np.ndarray, row_cosines, column_cosines) -> np.ndarray:
    """Reorient an axial [z, y, x] volume so x runs towards patient Left and y towards Posterior.

    `row_cosines` is the direction of increasing column index (ImageOrientationPatient values
    1-3), `column_cosines` that of increasing row index (values 4-6). Raises ValueError for a
    non-axial orientation.
    """
    return _axial_order(row_cosines, column_cosines).apply(volume)


def from_lps(volume: np.ndarray, row_cosines, column_cosines) -> np.ndarray:
    """The inverse of `to_lps` (e.g. a mask found in LPS order back onto the stored image)."""
    return _axial_order(row_cosines, column_cosines).invert(volume)


def image_lps_order(image) -> LpsOrder:
    """LpsOrder of a 3-D SimpleITK image's array ([k, j, i]: array axis a is image axis 2 - a)."""
    d = np.asarray(image.GetDirection(), float).reshape(3, 3)
    return lps_order([d[:, 2 - a] for a in range(3)])


def _region(name: str, hu: np.ndarray, mask: np.ndarray, spacing, method: str) -> Region | None:
    n = int(mask.sum())
    if n == 0:
        return None
    vals = hu[mask].astype(float)
    idx = np.argwhere(mask).mean(axis=0)
    return Region(name, mask, tuple(float(i) for i in idx), tuple(float(i * s) for i, s in zip(idx, spacing)),
                  float(vals.mean()), float(np.median(vals)), float(vals.std()), n, method)


def disk(radius_px: float) -> np.ndarray:
    """Boolean disk structuring element of `radius_px` pixels (at least 3 x 3)."""
    r = max(1, int(round(radius_px)))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return (x * x + y * y) <= radius_px * radius_px + 0.25


def body_mask(hu: np.ndarray, threshold: float = BODY_HU) -> np.ndarray:
    """Per slice: the largest connected region above `threshold` HU, holes filled (table and
    air outside excluded)."""
    out = np.zeros(hu.shape, bool)
    for k in range(hu.shape[0]):
        lab, n = ndimage.label(hu[k] > threshold)
        if n == 0:
            continue
        largest = lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
        out[k] = fill_holes_2d(largest)
    return out


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """binary_fill_holes of one slice, computed inside the mask's bounding box only."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    out = np.zeros_like(mask)
    if rows.size:
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        out[box] = ndimage.binary_fill_holes(mask[box])
    return out


@dataclass
class Spine:
    """Vertebral body per slice: midline x and anterior cortex y, in index units (NaN: not found)."""

    x: np.ndarray
    anterior_y: np.ndarray
    mask: np.ndarray

    @property
    def found(self) -> bool:
        return bool(np.isfinite(self.x).any())


def find_spine(hu: np.ndarray, spacing, body: np.ndarray | None = None) -> Spine:
    """Per slice, the vertebral body: the largest bone component (>= 200 HU, >= 300 mm^2) in the
    central band of the body (|x - body centre| <= 15% of body width) and not in its anterior
    third. A vertebral body (about 1000-2000 mm^2) outsizes an enhanced aorta and a separate
    posterior arch. Its anterior cortex is the most anterior bone row within 10 mm of its
    median column."""
    dz, dy, dx = spacing
    body = body_mask(hu) if body is None else body
    nz = hu.shape[0]
    xs, ys = np.full(nz, np.nan), np.full(nz, np.nan)
    mask = np.zeros(hu.shape, bool)
    for k in range(nz):
        if not body[k].any():
            continue
        yy, xx = np.nonzero(body[k])
        cx, width = xx.mean(), (xx.max() - xx.min() + 1)
        y_front = yy.min() + (yy.max() - yy.min() + 1) / 3.0
        lab, n = ndimage.label((hu[k] >= BONE_HU) & body[k])
        best, best_area = 0, 300.0
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            comp = lab[sl] == i
            area = comp.sum() * dy * dx
            cy_i, cx_i = np.argwhere(comp).mean(axis=0) + (sl[0].start, sl[1].start)
            if area >= best_area and abs(cx_i - cx) <= 0.15 * width and cy_i >= y_front:
                best, best_area = i, area
        if best:
            comp = lab == best
            mask[k] = comp
            x_mid = float(np.median(np.nonzero(comp)[1]))
            near = comp[:, max(0, int(x_mid - 10 / dx)):int(x_mid + 10 / dx) + 1]
            xs[k] = x_mid
            ys[k] = float(np.nonzero(near.any(axis=1))[0].min())
    return Spine(xs, ys, mask)


def _roundness(comp: np.ndarray, dy: float, dx: float) -> tuple[float, float]:
    """(equivalent diameter mm, area / area of the circle through its farthest pixel)."""
    pts = np.argwhere(comp) * (dy, dx)
    area = len(pts) * dy * dx
    c = pts.mean(axis=0)
    rmax = np.sqrt(((pts - c) ** 2).sum(axis=1)).max() + 0.5 * max(dy, dx)
    return 2.0 * np.sqrt(area / np.pi), area / (np.pi * rmax * rmax)


@dataclass
class Lumen:
    """The enhanced aortic lumen on one slice (index units, LPS): its deepest point (cy, cx), the
    depth there (mm from the wall or from calcium), its equivalent radius (mm), its median HU
    and its mask (bool, whole slice, calcified voxels removed)."""

    cy: float
    cx: float
    depth_mm: float
    radius_mm: float
    median_hu: float
    mask: np.ndarray


def _rim_brighter_than_core(win: np.ndarray, comp: np.ndarray, radius_px: float) -> bool:
    """True for a shell brighter than its inside (cortical bone around marrow, a calcified wall)
    rather than a lumen, whose edge reads lower than its centre by partial volume."""
    core = ndimage.binary_erosion(comp, structure=disk(max(1.0, radius_px / 2.0)))
    ring = comp & ~core
    if core.sum() < 3 or ring.sum() < 3:
        return False
    return float(np.median(win[ring])) > float(np.median(win[core])) + RIM_EXCESS_HU


def aortic_lumen(hu: np.ndarray, spacing, body: np.ndarray | None = None,
                 spine: Spine | None = None, unenhanced: np.ndarray | None = None) -> dict[int, Lumen]:
    """Per slice index, the enhanced aortic lumen; empty when there is no spine or no enhanced lumen
    on at least a third of the slices with a spine.

    Candidates are round components (12-40 mm wide, at several thresholds from 90 HU) in the
    window anterior-left of the vertebral body. Rejected: rings and shells brighter at the rim
    than inside (bone cortex, calcified wall), and anything inside them. Of nested candidates
    only the outermost is kept, so a plaque or a bright jet inside a lumen never replaces it.
    The candidate nearest the expected position wins; brightness breaks near-ties (20 HU count
    as 1 mm), so an IVC or bowel farther away loses even when brighter. Found on fewer than a
    third of the slices with a spine (with `unenhanced`: nor over AORTA_MIN_TRACK_MM), the
    aorta counts as not found. Slices off the median
    track (an IVC or bowel picked on a few slices) are dropped. Calcium (> 100 HU above the
    lumen's median) is cut out of the mask. With `unenhanced`, the unenhanced phase registered
    onto the same grid: a candidate whose median reads CALCIUM_UNENHANCED_HU or more before
    contrast is not blood and is dropped, and voxels reaching it (calcium; unsmoothed, as Agatston
    applies it) are cut out too."""
    dz, dy, dx = spacing
    body = body_mask(hu) if body is None else body
    spine = find_spine(hu, spacing, body) if spine is None else spine
    if not spine.found:
        return {}
    ks = [k for k in range(hu.shape[0]) if np.isfinite(spine.x[k])]
    (wx0, wx1), (wy0, wy1) = AORTA_WINDOW_MM
    ex, ey = AORTA_OFFSET_MM
    hits: dict[int, tuple] = {}
    for k in ks:
        x0, y0 = spine.x[k], spine.anterior_y[k]
        ylo, yhi = int(max(0, y0 - wy1 / dy)), int(min(hu.shape[1], y0 - wy0 / dy + 1))
        xlo, xhi = int(max(0, x0 + wx0 / dx)), int(min(hu.shape[2], x0 + wx1 / dx + 1))
        if ylo >= yhi or xlo >= xhi:
            continue
        # Smoothed so noise does not fragment the lumen; several thresholds because late in the
        # bolus the aorta touches structures of similar attenuation (liver, crus, IVC) and only
        # separates from them above their level.
        win = ndimage.gaussian_filter(hu[k, ylo:yhi, xlo:xhi].astype(float), sigma=0.7)
        pre = (None if unenhanced is None
               else ndimage.gaussian_filter(unenhanced[k, ylo:yhi, xlo:xhi].astype(float), sigma=0.7))
        keep = ~spine.mask[k, ylo:yhi, xlo:xhi] & body[k, ylo:yhi, xlo:xhi]
        cands = []  # (threshold index, comp, cy, cx, diameter, median, distance)
        shells = []  # components that are bone or calcified shells, and everything inside them
        for ti, threshold in enumerate(AORTA_THRESHOLDS_HU):
            lab, n = ndimage.label((win >= threshold) & keep)
            for i in range(1, n + 1):
                comp = lab == i
                if any(sh[comp].all() for sh in shells):
                    continue
                diam, round_ = _roundness(comp, dy, dx)
                if not AORTA_DIAMETER_MM[0] <= diam <= AORTA_DIAMETER_MM[1] or round_ < 0.5:
                    continue
                filled = ndimage.binary_fill_holes(comp)
                # a ring (cortex above the threshold, marrow below) or a rim brighter than its inside
                if filled.sum() > 1.15 * comp.sum() or _rim_brighter_than_core(win, comp, diam / 2.0 / min(dy, dx)):
                    shells.append(filled)
                    continue
                if pre is not None and float(np.median(pre[comp])) >= CALCIUM_UNENHANCED_HU:
                    continue  # not blood before contrast: bowel with oral contrast, bone
                cy, cx = np.argwhere(comp).mean(axis=0) + (ylo, xlo)
                d = float(np.hypot((cx - x0) * dx - ex, (y0 - cy) * dy - ey))
                cands.append((ti, comp, cy, cx, diam, float(np.median(win[comp])), d))
        # Nested candidates: keep the outermost (a lower-threshold round component containing it).
        outer = [c for c in cands
                 if not any(o[0] < c[0] and o[1][c[1]].all() for o in cands)]
        if not outer:
            continue
        best = max(outer, key=lambda c: c[5] / BRIGHTNESS_HU_PER_MM - c[6])
        hits[k] = (best, ylo, xlo, win)
    quorum = len(ks) / 3.0
    if unenhanced is not None:  # candidates confirmed as blood before contrast: a shorter track will do
        quorum = min(quorum, AORTA_MIN_TRACK_MM / dz)
    if len(hits) < max(1.0, quorum):
        return {}
    my = np.median([h[0][2] for h in hits.values()])
    mx = np.median([h[0][3] for h in hits.values()])
    radius = np.median([h[0][4] for h in hits.values()]) / 2.0
    out: dict[int, Lumen] = {}
    for k, ((_, comp, cy, cx, diam, med, _), ylo, xlo, win) in hits.items():
        if np.hypot((cy - my) * dy, (cx - mx) * dx) > max(10.0, radius):
            continue
        dense = win > med + CALCIUM_ABOVE_LUMEN_HU
        if unenhanced is not None:  # on the unsmoothed pixels, as Agatston's threshold is applied
            dense |= unenhanced[k, ylo:ylo + comp.shape[0], xlo:xlo + comp.shape[1]] >= CALCIUM_UNENHANCED_HU
        calcium = ndimage.binary_dilation(comp & dense, iterations=1)
        lumen = comp & ~calcium
        if not lumen.any():
            continue
        depth = ndimage.distance_transform_edt(np.pad(lumen, 1), sampling=(dy, dx))[1:-1, 1:-1]
        iy, ix = np.unravel_index(int(np.argmax(depth)), depth.shape)
        full = np.zeros(hu.shape[1:], bool)
        full[ylo:ylo + comp.shape[0], xlo:xlo + comp.shape[1]] = lumen
        out[k] = Lumen(float(iy + ylo), float(ix + xlo), float(depth[iy, ix]), diam / 2.0, med, full)
    return out


def find_aorta(hu: np.ndarray, spacing, body: np.ndarray | None = None, spine: Spine | None = None) -> Region | None:
    """The abdominal aorta as a central ROI per slice (radius 5 mm, or 60% of the lumen radius
    when larger, centred on the lumen's deepest point), mean HU over it.

    Contrast phases: the lumen found by `aortic_lumen`. Otherwise (unenhanced): the expected
    position against the spine, moved within 8 mm to the most homogeneous spot that is not fat.
    """
    dz, dy, dx = spacing
    body = body_mask(hu) if body is None else body
    spine = find_spine(hu, spacing, body) if spine is None else spine
    if not spine.found:
        return None
    ks = [k for k in range(hu.shape[0]) if np.isfinite(spine.x[k])]
    lumen = aortic_lumen(hu, spacing, body, spine)
    mask = np.zeros(hu.shape, bool)
    if lumen:
        for k, lu in lumen.items():
            mask[k] |= disk_mask(mask.shape[1:], int(round(lu.cy)), int(round(lu.cx)),
                                 max(ROI_RADIUS_MM, 0.6 * lu.radius_mm), dy, dx)
            mask[k] &= lu.mask
        region = _region("aorta", hu, mask, spacing, "enhanced lumen anterior-left of the spine")
        if region is not None:
            region.notes.append(f"found on {len(lumen)} of {len(ks)} slices with a spine")
            return region
    ex, ey = AORTA_OFFSET_MM
    for k in ks:
        cy = spine.anterior_y[k] - ey / dy
        cx = spine.x[k] + ex / dx
        cy, cx = _homogeneous_spot(hu[k], cy, cx, dy, dx)
        mask[k] |= disk_mask(mask.shape[1:], int(round(cy)), int(round(cx)), ROI_RADIUS_MM, dy, dx)
    mask &= body
    region = _region("aorta", hu, mask, spacing, "position against the spine (no enhanced lumen found)")
    return region


def disk_mask(shape, cy: int, cx: int, radius_mm: float, dy: float, dx: float) -> np.ndarray:
    """A disk around pixel (cy, cx) whose pixel area is the closest to pi r^2 that the grid allows
    (see `_stencil`; one ROI disk painter for the package), clipped to the slice."""
    st = _stencil(float(radius_mm), float(dy), float(dx))
    out = np.zeros(shape, bool)
    h = st.shape[0] // 2, st.shape[1] // 2
    y0, x0 = cy - h[0], cx - h[1]
    ys, xs = slice(max(0, y0), min(shape[0], y0 + st.shape[0])), slice(max(0, x0), min(shape[1], x0 + st.shape[1]))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys, xs] = st[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return out


@lru_cache(maxsize=64)
def _stencil(radius_mm: float, dy: float, dx: float) -> np.ndarray:
    """Disk pattern (odd-sized, centred) with the pixel area closest to pi r^2: radius within
    +/- 25%, centre on the pixel or up to half a pixel off it (coarse pixels give few areas
    otherwise)."""
    target = np.pi * radius_mm ** 2
    ry, rx = int(np.ceil(1.25 * radius_mm / dy)) + 1, int(np.ceil(1.25 * radius_mm / dx)) + 1
    yy, xx = np.ogrid[-ry:ry + 1, -rx:rx + 1]
    best, best_err = None, np.inf
    for oy, ox in ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5)):
        d2 = ((yy - oy) * dy) ** 2 + ((xx - ox) * dx) ** 2
        for r in np.linspace(0.75 * radius_mm, 1.25 * radius_mm, 41):
            m = d2 <= r * r
            err = abs(m.sum() * dy * dx - target)
            if err < best_err - 1e-9:
                best, best_err = m, err
    best.flags.writeable = False
    return best


def _homogeneous_spot(img: np.ndarray, cy: float, cx: float, dy: float, dx: float,
                      search_mm: float = 8.0) -> tuple[float, float]:
    """Within `search_mm`, the 5 mm disk centre with the lowest SD that is not fat or air.

    No upper limit: if an enhanced lumen was missed, the spot lands in it and reads bright,
    rather than being steered to soft tissue and read as unenhanced blood."""
    best, best_sd = (cy, cx), np.inf
    step_y, step_x = max(1, int(round(2.0 / dy))), max(1, int(round(2.0 / dx)))
    for oy in range(-int(search_mm / dy), int(search_mm / dy) + 1, step_y):
        for ox in range(-int(search_mm / dx), int(search_mm / dx) + 1, step_x):
            y, x = cy + oy, cx + ox
            m = disk_mask(img.shape, int(round(y)), int(round(x)), ROI_RADIUS_MM, dy, dx)
            if not m.any():
                continue
            v = img[m]
            if v.mean() < -20.0:
                continue
            if v.std() < best_sd:
                best, best_sd = (y, x), v.std()
    return best


def find_liver(hu: np.ndarray, spacing, body: np.ndarray | None = None, spine: Spine | None = None
               ) -> Region | None:
    """A homogeneous sample of the liver's parenchyma (`Region.mask`, for its HU, as phase
    confirmation reads it), the liver found as hccnode.imaging.liver describes (its own
    attenuation on the patient's right, separated from touching organs of similar attenuation by
    distance-transform cores). None when no liver is found (`find_liver_extent` there also says
    what was found instead, and gives the organ's extent for placing ROIs)."""
    from hccnode.imaging import liver as finder

    body = body_mask(hu) if body is None else body
    spine = find_spine(hu, spacing, body) if spine is None else spine
    found, _ = finder.find_liver_extent(hu, spacing, body, spine.x, spine.anterior_y, refine=False)
    if found is None:
        return None
    region = _region("liver", hu, found.sample, spacing, found.method)
    if region is not None:
        region.notes.append(f"extent {found.volume_ml:.0f} mL on the search grid")
    return region


def air_fraction(hu: np.ndarray) -> float:
    """Fraction of voxels below -500 HU (about 0 for maps that are not HU images)."""
    return float((hu < BODY_HU).mean()) if hu.size else 0.0
