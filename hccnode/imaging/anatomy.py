"""Finding the body, the spine, the aorta and a liver sample region in an axial CT volume.

Pure functions on a HU volume; nothing here reads files. Used by phase confirmation
(hccnode.imaging.phases) and, later, by the measurement engine to place automatic ROIs.

Conventions
-----------
* `hu` is a float array indexed [z, y, x] (slice, row, column) in Hounsfield units.
* In-plane axes follow DICOM LPS: column index x increases towards the patient's Left, row index
  y increases towards Posterior (the standard axial display of a supine patient). `to_lps()`
  brings other axial orientations (prone, feet-first, flipped) to this one. z order is free.
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

import numpy as np
from scipy import ndimage

BODY_HU = -500.0           # air / body boundary
BONE_HU = 200.0            # cortical and dense cancellous bone
ENHANCED_BLOOD_HU = 90.0   # intravenous iodine lifts blood (about 40 HU) above this
AORTA_THRESHOLDS_HU = (ENHANCED_BLOOD_HU, 110.0, 125.0, 140.0, 160.0, 200.0, 250.0)
SOFT_HU = (-30.0, 250.0)   # soft-tissue window for organ search (excludes fat, air, dense bone)
AORTA_DIAMETER_MM = (12.0, 40.0)
# Expected aorta centre relative to the vertebral body: x from its midline (towards Left),
# y in front of its anterior cortex (towards Anterior), and the search window around it.
AORTA_OFFSET_MM = (15.0, 15.0)
AORTA_WINDOW_MM = ((-25.0, 50.0), (-2.0, 70.0))
ROI_RADIUS_MM = 5.0


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


def to_lps(volume: np.ndarray, row_cosines, column_cosines) -> np.ndarray:
    """Reorient an axial [z, y, x] volume so x runs towards patient Left and y towards Posterior.

    `row_cosines` is the direction of increasing column index (ImageOrientationPatient values
    1-3), `column_cosines` that of increasing row index (values 4-6). Raises ValueError for a
    non-axial orientation.
    """
    r = np.asarray(row_cosines, float)
    c = np.asarray(column_cosines, float)
    ri, ci = int(np.argmax(np.abs(r))), int(np.argmax(np.abs(c)))
    if {ri, ci} != {0, 1} or abs(r[ri]) < 0.7 or abs(c[ci]) < 0.7:
        raise ValueError("not an axial image orientation")
    v = volume
    if ri == 1:  # columns run along y: swap in-plane axes
        v = np.swapaxes(v, 1, 2)
        r, c = c, r
    if r[0] < 0:
        v = v[:, :, ::-1]
    if c[1] < 0:
        v = v[:, ::-1, :]
    return v


def _region(name: str, hu: np.ndarray, mask: np.ndarray, spacing, method: str) -> Region | None:
    n = int(mask.sum())
    if n == 0:
        return None
    vals = hu[mask].astype(float)
    idx = np.argwhere(mask).mean(axis=0)
    return Region(name, mask, tuple(float(i) for i in idx), tuple(float(i * s) for i, s in zip(idx, spacing)),
                  float(vals.mean()), float(np.median(vals)), float(vals.std()), n, method)


def _disk(radius_px: float) -> np.ndarray:
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
        sizes = np.bincount(lab.ravel())[1:]
        out[k] = ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
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


def find_aorta(hu: np.ndarray, spacing, body: np.ndarray | None = None, spine: Spine | None = None) -> Region | None:
    """The abdominal aorta as a central ROI per slice (radius 5 mm, or 60% of the lumen radius
    when larger), mean HU over it.

    Contrast phases: the brightest round component (>= 90 HU, 12-40 mm wide) in the window
    anterior-left of the vertebral body, penalised by its distance from the expected position;
    used when found on at least a third of the slices with a spine. Otherwise (unenhanced): the
    expected position against the spine, moved within 8 mm to the most homogeneous spot that is
    not fat.
    """
    dz, dy, dx = spacing
    body = body_mask(hu) if body is None else body
    spine = find_spine(hu, spacing, body) if spine is None else spine
    if not spine.found:
        return None
    ks = [k for k in range(hu.shape[0]) if np.isfinite(spine.x[k])]
    (wx0, wx1), (wy0, wy1) = AORTA_WINDOW_MM
    ex, ey = AORTA_OFFSET_MM
    hits: dict[int, tuple[float, float, float]] = {}
    for k in ks:
        x0, y0 = spine.x[k], spine.anterior_y[k]
        ylo, yhi = int(max(0, y0 - wy1 / dy)), int(min(hu.shape[1], y0 - wy0 / dy + 1))
        xlo, xhi = int(max(0, x0 + wx0 / dx)), int(min(hu.shape[2], x0 + wx1 / dx + 1))
        if ylo >= yhi or xlo >= xhi:
            continue
        # Smoothed so noise does not fragment the lumen; several thresholds because late in the
        # bolus the aorta touches structures of similar attenuation (liver, crus, IVC) and only
        # separates from them above their level. Among all round candidates the brightest wins,
        # less 1 HU per mm from the expected position (an IVC as bright as the aorta is farther).
        win = ndimage.gaussian_filter(hu[k, ylo:yhi, xlo:xhi].astype(float), sigma=0.7)
        keep = ~spine.mask[k, ylo:yhi, xlo:xhi] & body[k, ylo:yhi, xlo:xhi]
        best, best_score = None, -np.inf
        for threshold in AORTA_THRESHOLDS_HU:
            lab, n = ndimage.label((win >= threshold) & keep)
            for i in range(1, n + 1):
                comp = lab == i
                diam, round_ = _roundness(comp, dy, dx)
                if not AORTA_DIAMETER_MM[0] <= diam <= AORTA_DIAMETER_MM[1] or round_ < 0.5:
                    continue
                cy, cx = np.argwhere(comp).mean(axis=0) + (ylo, xlo)
                d = np.hypot((cx - x0) * dx - ex, (y0 - cy) * dy - ey)
                score = float(np.median(win[comp])) - d
                if score > best_score:
                    best, best_score = (cy, cx, diam / 2.0), score
        if best is not None:
            hits[k] = best
    mask = np.zeros(hu.shape, bool)
    if len(hits) >= max(1, len(ks) / 3):
        # Keep hits near the median track (drops an IVC or bowel picked on a few slices).
        my = np.median([h[0] for h in hits.values()])
        mx = np.median([h[1] for h in hits.values()])
        radius = np.median([h[2] for h in hits.values()])
        for k, (cy, cx, r) in hits.items():
            if np.hypot((cy - my) * dy, (cx - mx) * dx) <= max(10.0, radius):
                _paint(mask[k], cy, cx, max(ROI_RADIUS_MM, 0.6 * r), dy, dx)
        region = _region("aorta", hu, mask, spacing, "enhanced lumen anterior-left of the spine")
        if region is not None:
            region.notes.append(f"found on {len(hits)} of {len(ks)} slices with a spine")
            return region
    for k in ks:
        cy = spine.anterior_y[k] - ey / dy
        cx = spine.x[k] + ex / dx
        cy, cx = _homogeneous_spot(hu[k], cy, cx, dy, dx)
        _paint(mask[k], cy, cx, ROI_RADIUS_MM, dy, dx)
    mask &= body
    region = _region("aorta", hu, mask, spacing, "position against the spine (no enhanced lumen found)")
    return region


def _paint(sl: np.ndarray, cy: float, cx: float, radius_mm: float, dy: float, dx: float) -> None:
    yy, xx = np.ogrid[:sl.shape[0], :sl.shape[1]]
    sl |= ((yy - cy) * dy) ** 2 + ((xx - cx) * dx) ** 2 <= radius_mm ** 2


def _homogeneous_spot(img: np.ndarray, cy: float, cx: float, dy: float, dx: float, search_mm: float = 8.0) -> tuple[float, float]:
    """Within `search_mm`, the 5 mm disk centre with the lowest SD that is not fat or air.

    No upper limit: if an enhanced lumen was missed, the spot lands in it and reads bright,
    rather than being steered to soft tissue and read as unenhanced blood."""
    best, best_sd = (cy, cx), np.inf
    step_y, step_x = max(1, int(round(2.0 / dy))), max(1, int(round(2.0 / dx)))
    for oy in range(-int(search_mm / dy), int(search_mm / dy) + 1, step_y):
        for ox in range(-int(search_mm / dx), int(search_mm / dx) + 1, step_x):
            y, x = cy + oy, cx + ox
            m = np.zeros(img.shape, bool)
            _paint(m, y, x, ROI_RADIUS_MM, dy, dx)
            if not m.any():
                continue
            v = img[m]
            if v.mean() < -20.0:
                continue
            if v.std() < best_sd:
                best, best_sd = (y, x), v.std()
    return best


def find_liver(hu: np.ndarray, spacing, body: np.ndarray | None = None, erode_mm: float = 6.0) -> Region | None:
    """A liver sample region: the largest soft-tissue component (eroded by `erode_mm` in plane)
    whose centroid lies on the patient's right, trimmed to median +/- 2.5 robust SD of its HU
    (drops vessels, tumors and edges)."""
    dz, dy, dx = spacing
    body = body_mask(hu) if body is None else body
    soft = body & (hu > SOFT_HU[0]) & (hu < SOFT_HU[1])
    ker = _disk(erode_mm / min(dy, dx))
    eroded = np.zeros_like(soft)
    for k in range(hu.shape[0]):
        eroded[k] = ndimage.binary_erosion(soft[k], structure=ker)
    lab, n = ndimage.label(eroded)
    if n == 0:
        return None
    # Size and mean column of every component (bincount: linear time, whatever the count).
    flat = lab.ravel()
    sizes = np.bincount(flat, minlength=n + 1).astype(float)
    columns = np.bincount(flat, weights=np.broadcast_to(np.arange(lab.shape[2], dtype=float), lab.shape).ravel(),
                          minlength=n + 1)
    body_cx = np.nonzero(body)[2].mean()
    best, best_size = 0, 0.0
    for i in range(1, n + 1):
        if columns[i] / sizes[i] < body_cx and sizes[i] > best_size:
            best, best_size = i, sizes[i]
    if not best:
        return None
    comp = lab == best
    vals = hu[comp]
    med = float(np.median(vals))
    mad = 1.4826 * float(np.median(np.abs(vals - med))) or 1.0
    core = comp & (np.abs(hu - med) <= 2.5 * mad)
    region = _region("liver", hu, core, spacing, "largest right-sided soft-tissue organ")
    if region is not None:
        region.notes.append(f"{int(best_size)} voxels before trimming to median +/- 2.5 robust SD")
    return region


def air_fraction(hu: np.ndarray) -> float:
    """Fraction of voxels below -500 HU (about 0 for maps that are not HU images)."""
    return float((hu < BODY_HU).mean()) if hu.size else 0.0
