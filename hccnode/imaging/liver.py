"""Finding the liver in an axial CT volume when it touches other organs without a fat plane.

Pure functions on LPS-ordered HU arrays ([z, y, x], x towards the patient's Left, y Posterior;
see hccnode.imaging.anatomy). `find_liver` returns the organ's extent and a homogeneous sample of
its parenchyma; hccnode.imaging.auto_rois places paper 001's ROIs inside that extent and
hccnode.imaging.phase_index reads the sample's median HU to confirm contrast phases.

Why not "the largest soft-tissue component"
-------------------------------------------
Everything between fat (below -30 HU) and bone has soft-tissue attenuation: liver, spleen,
kidneys, bowel, stomach, muscle, ascites. Where fat planes are thin or absent (the rule in
cachectic cirrhotic patients, and usual between liver, diaphragm, abdominal wall, right kidney
and bowel) all of them form one component whose centre is the midline.

Method (and why this one)
-------------------------
1. **The liver's own attenuation.** Inside the right upper quadrant (patient's right of the
   spine, in front of the vertebral body's middle) the liver is the thickest homogeneous organ.
   The mode of the smoothed HU of that quadrant's soft tissue, each voxel weighted by how deep it
   lies inside tissue of its own attenuation, is the liver's; its centre is refined on the deep
   voxels of that tissue (thin walls, bowel and vessels do not pull it). Up to three histogram
   peaks are tried, strongest first; a peak that cannot be liver parenchyma is passed over with
   its reason (water-like in an enhanced phase, brighter than 200 HU, enhancing less than 15 HU,
   or fat-like before contrast).
2. **A band, two features when there are two phases.** Voxels within the band around that value
   (three times the peak's spread, from +/- 15 to +/- 25 HU), with small enclosed holes filled
   (vessels, small lesions), exclude fat, ascites and fluid, gas, bone, contrast-filled vessels, kidneys and, at portal venous and equilibrium
   phase, most muscle (muscle enhances far less than liver). With a registered unenhanced phase the
   enhancement (enhanced minus unenhanced) must also lie in the liver's band: muscle and a fatty
   liver can share an enhanced HU, never an enhancement.
3. **Separating what still touches: distance-transform cores and their Voronoi cells.** Organs of
   similar attenuation (spleen, a muscle, bowel wall, myocardium) can still touch the liver
   within the band. Their contact is narrower than the organs themselves, so the voxels deeper
   than r mm inside the band (3-D Euclidean distance transform in mm) fall apart into one core
   per organ; every band voxel within r + 3 mm of a core joins the core nearest to it (what is
   thinner than 2r, a wall or a bowel loop, drops off). The candidate is the cell holding most of
   the right upper quadrant; r starts at 6 mm and grows (x 1.35, up to 30 mm) only while that cell
   fails the anatomical checks of step 4, so a thin left lobe stays attached to the liver wherever
   nothing forces a deeper cut. This was chosen over a watershed on the distance map (one more dependency, and the same cells for convex organs),
   over seeded region growing with gradient stops (the gradient between liver and spleen or muscle
   at equilibrium is of the order of the noise) and over a graph cut (needs intensity models of
   every touching organ, which is what is unknown).
4. **Anatomical checks** (each from anatomy, none from a phantom): the liver's cell has its
   centroid on the patient's right (at least 10 mm right of the spine's midline: even a left lobe
   across the midline leaves the bulk in the right upper quadrant) and not behind the vertebral
   body; it does not reach into the left posterior quadrant where the spleen lies (at most 10 %
   of it more than 40 mm left of the midline and behind the vertebral body's anterior cortex)
   nor among the back muscles (at most 5 % behind the vertebral body within 50 mm of the
   midline; the posterior right lobe reaches back lateral to them); its volume is at
   most 3.5 L (adult livers range 0.6-3.5 L: small cirrhotic to hepatomegaly), plus 20 % for the
   band's partial-volume rim; its largest axial cross-section at least 20 cm^2 on the search grid;
   at least 20 cm^2 x 3 cm (or x the scan's height when shorter) in volume; and, when it ends
   within the scan at both ends (the whole organ), at least 300 mL. A scan that covers only part
   of the liver gives a smaller cell, which is held only to the smaller bounds.

When no cell passes at any depth, the liver is not found and `find_liver_extent` says, per
tissue tried, what it found instead (the SR reports it; everything else is still measured).

The search runs on a coarse grid (pixels of at least 3 mm, slices at least 4 mm apart, block
means): organ-scale decisions need no finer grid; the extent is then refined on the input grid
with the same band.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hccnode.imaging.anatomy import VERTEBRAL_MID_MM

# Soft tissue: above fat (fat is below -30 HU), below dense bone and undiluted contrast.
SOFT_HU = (-30.0, 250.0)
# The liver itself stays below this in every phase: unenhanced about 40-70 HU, and its enhancement
# at the portal venous peak some 50-80 HU more; what is brighter in the right upper quadrant is
# contrast-filled blood, the renal cortex, oral contrast in the bowel, calcium or bone.
LIVER_MAX_HU = 200.0
# Half width of the liver's band: at least this (HU), or this many robust SDs of the smoothed
# parenchyma (noisy images, heterogeneous or cirrhotic parenchyma).
BAND_MIN_HU = 15.0
BAND_SD = 3.0
# ... and at most this: at portal venous and equilibrium phase muscle lies 30-40 HU below the liver
# (it enhances far less), so a wider band would take the diaphragm and abdominal wall with it.
BAND_MAX_HU = 25.0
# Enhancement band (HU) with a registered unenhanced phase: at least this wide. Tissue enhancing by
# less than ENHANCED_MIN_HU is not the liver (fluid and oral contrast do not enhance, muscle little:
# about 10 HU; the liver's extracellular space, a quarter to a third of it, takes 20 HU or more at
# portal venous and equilibrium phase).
ENH_BAND_MIN_HU = 12.0
ENH_BAND_MAX_HU = 25.0
ENHANCED_MIN_HU = 15.0
# In-plane smoothing before judging attenuation (mm, Gaussian sigma).
SMOOTH_MM = 2.0
# Coarse search grid.
COARSE_PIXEL_MM = 3.0
COARSE_SLICE_MM = 4.0
# Holes in the band up to this area (mm^2) are filled: the largest intrahepatic vessels (portal
# vein branches and hepatic veins up to about 15 mm) and small lesions.
VESSEL_HOLE_MM2 = 300.0
# Core depths (mm): first, growth factor, last.
CORE_START_MM = 6.0
CORE_GROWTH = 1.35
CORE_MAX_MM = 30.0
# Anatomical checks (see the module docstring).
RIGHT_OF_MIDLINE_MM = 10.0
SPLEEN_ZONE_LEFT_MM = 40.0
SPLEEN_ZONE_FRACTION = 0.10
BEHIND_SPINE_FRACTION = 0.05
# The back muscles (erector spinae, multifidus) lie behind the vertebral body within about 50 mm of
# the midline; the liver's posterior right lobe reaches back beside the ribs, lateral to them.
PARASPINAL_MM = 50.0
# The vertebral body's front is taken as the median over this height (mm): a disc space (not bone)
# or a slice through the posterior elements only would otherwise move it from slice to slice.
SPINE_WINDOW_MM = 50.0
VERTEBRAL_DEPTH_MM = 35.0        # anterior cortex to posterior edge (thoracolumbar 25-35 mm)
LIVER_MAX_ML = 3500.0 * 1.2
# The liver's largest axial cross-section: even a small cirrhotic liver (0.6 L, about 11 x 9 x 8 cm)
# is some 70 cm^2 at its widest. The bound is 20 cm^2 as measured on the smoothed search grid
# (which loses a rim of about one 3-4 mm voxel to partial volume), leaving room for a scan that
# covers only the liver's lower part.
LIVER_MIN_AREA_MM2 = 2000.0
# A cell that ends within the scan at both ends is the whole organ: a liver is at least 0.6 L; half
# of that allows for what the band leaves out (vessels, lesions, its partial-volume rim).
LIVER_MIN_WHOLE_ML = 300.0
# Even cut by the scan's end, a liver extends over at least this height (mm) with sections of at
# least LIVER_MIN_AREA_MM2 (or the scan's whole height, when the scan is shorter).
LIVER_MIN_HEIGHT_MM = 30.0
# Cells smaller than this (mL) are not judged (noise, vessels, bowel loops); a liver is larger
# even when the scan covers only a few centimetres of it.
MIN_CELL_ML = 20.0
# A cell keeps the band's voxels within this distance beyond its core depth (the partial-volume
# rim of one coarse voxel).
REGAIN_MM = 3.0
# In a contrast-enhanced phase the liver is not water-like: fluid (ascites, bile, cysts, fluid-filled
# bowel) stays at 0-20 HU, while even a severely fatty liver (down to about 0 HU unenhanced) gains
# tens of HU at portal venous and equilibrium phase (its extracellular space fills with contrast).
LIVER_MIN_ENHANCED_HU = 30.0
# With a registered unenhanced phase the enhancement itself tells fluid (none) from a liver, and a
# severely fatty liver (about 0 HU before contrast, 25 HU more at equilibrium) may read below this
# value: the rule then applies only without one (ENHANCED_MIN_HU decides instead).
# Histogram peaks tried as the liver's attenuation, strongest first.
PEAKS_TRIED = 3
# The sample for phase confirmation: this deep inside the liver's extent (mm), trimmed to the
# median +/- 2.5 robust SD.
SAMPLE_DEPTH_MM = 6.0


@dataclass
class LiverFind:
    """What `find_liver_extent` found: the organ's extent on the input grid (bool [z, y, x]), a
    sample of its parenchyma for its HU (voxels at least SAMPLE_DEPTH_MM inside it, or half its
    own depth when thinner, trimmed to the median +/- 2.5 robust SD), the parenchyma band (HU, and enhancement HU when an unenhanced phase was used), the core depth
    that separated it, and a sentence on how it was found."""

    organ: np.ndarray
    sample: np.ndarray
    band_hu: tuple[float, float]
    enhancement_hu: tuple[float, float] | None
    core_mm: float
    method: str
    volume_ml: float


def robust_sd(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation (HU): the SD of normal values, little moved by
    vessels, lesions and edges; 0 for no values."""
    if values.size == 0:
        return 0.0
    med = np.median(values)
    return 1.4826 * float(np.median(np.abs(values - med)))


def _smooth(img: np.ndarray, spacing) -> np.ndarray:
    _, dy, dx = spacing
    return ndimage.gaussian_filter(img.astype(np.float32, copy=False),
                                   sigma=(0.0, max(SMOOTH_MM / dy, 0.5), max(SMOOTH_MM / dx, 0.5)))


class _Grid:
    """Block-mean reduction to the coarse search grid and nearest expansion back."""

    def __init__(self, shape, spacing):
        dz, dy, dx = spacing
        self.shape = shape
        self.fz = max(1, int(round(COARSE_SLICE_MM / dz))) if dz > 0 else 1
        self.fy = max(1, int(round(COARSE_PIXEL_MM / dy)))
        self.fx = max(1, int(round(COARSE_PIXEL_MM / dx)))
        self.spacing = (dz * self.fz, dy * self.fy, dx * self.fx)

    def _padded(self, a: np.ndarray) -> np.ndarray:
        pads = [(0, (-n) % f) for n, f in zip(a.shape, (self.fz, self.fy, self.fx))]
        return np.pad(a, pads, mode="edge") if any(p[1] for p in pads) else a

    def reduce(self, a: np.ndarray) -> np.ndarray:
        a = self._padded(a)
        nz, ny, nx = a.shape
        return a.reshape(nz // self.fz, self.fz, ny // self.fy, self.fy, nx // self.fx, self.fx).mean(
            axis=(1, 3, 5), dtype=np.float32)

    def reduce_mask(self, m: np.ndarray) -> np.ndarray:
        return self.reduce(m.astype(np.float32)) >= 0.5

    def expand(self, m: np.ndarray) -> np.ndarray:
        out = m.repeat(self.fz, 0).repeat(self.fy, 1).repeat(self.fx, 2)
        return out[:self.shape[0], :self.shape[1], :self.shape[2]]


@dataclass
class _Frame:
    """Per coarse slice: the spine's midline x and the vertebral body's anterior cortex y (index
    units; `spine_front` None when no vertebral body was found on any slice)."""

    x_mid: np.ndarray
    spine_front: np.ndarray | None


def _per_slice(values: np.ndarray, grid: _Grid, scale: int) -> np.ndarray:
    """Per coarse slice, the median of the finite per-slice `values` (index units) it stands for,
    on the coarse grid (NaN where none)."""
    nzc = len(range(0, grid.shape[0], grid.fz))
    out = np.full(nzc, np.nan)
    for kc in range(nzc):
        v = values[kc * grid.fz:(kc + 1) * grid.fz]
        v = v[np.isfinite(v)]
        if v.size:
            out[kc] = (np.median(v) + 0.5) / scale - 0.5
    return out


def _frame(body: np.ndarray, spine_x: np.ndarray, spine_front: np.ndarray, grid: _Grid) -> _Frame:
    xs = _per_slice(np.asarray(spine_x, float), grid, grid.fx)
    for kc in np.nonzero(np.isnan(xs))[0]:  # no vertebral body here: the body's centre
        cols = np.nonzero(body[kc].any(axis=0))[0]
        if cols.size:
            xs[kc] = (cols[0] + cols[-1]) / 2.0
    xs = np.where(np.isnan(xs), np.nanmedian(xs) if np.isfinite(xs).any() else body.shape[2] / 2.0, xs)
    front = _per_slice(np.asarray(spine_front, float), grid, grid.fy)
    if np.isnan(front).all():
        return _Frame(xs, None)
    h = max(1, int(round(SPINE_WINDOW_MM / 2.0 / grid.spacing[0])))
    front = np.array([np.nanmedian(front[max(0, k - h):k + h + 1]) if np.isfinite(front[max(0, k - h):k + h + 1]).any()
                      else np.nan for k in range(front.size)])
    return _Frame(xs, np.where(np.isnan(front), np.nanmedian(front), front))


def _quadrant(shape, frame: _Frame, spacing, body: np.ndarray) -> np.ndarray:
    """Right upper quadrant of the body: right of the midline, in front of the vertebral body's
    middle (without a spine: the anterior 70 % of the body's depth)."""
    _, dy, _ = spacing
    yy, xx = np.ogrid[:shape[1], :shape[2]]
    right = xx[None] < frame.x_mid[:, None, None]
    if frame.spine_front is not None:
        y_limit = (frame.spine_front + VERTEBRAL_MID_MM / dy)[:, None, None]
    else:
        rows = np.nonzero(body.any(axis=(0, 2)))[0]
        y_limit = rows[0] + 0.7 * (rows[-1] - rows[0]) if rows.size else shape[1]
    return body & right & (yy[None] < y_limit)


def _peaks(values: np.ndarray, weights: np.ndarray, n: int) -> list[tuple[float, float]]:
    """The `n` strongest peaks of a weighted histogram (2 HU bins, smoothed over ~5 HU), at least
    20 HU apart, each with the SD its full width at half maximum implies (HU): the spread of the
    tissue's smoothed values, noise and texture, untruncated by any band."""
    if values.size == 0:
        return []
    lo, hi = SOFT_HU
    hist, edges = np.histogram(values, bins=int((hi - lo) / 2), range=(lo, hi), weights=weights)
    hist = ndimage.gaussian_filter1d(hist.astype(float), 2.5)
    centres = (edges[:-1] + edges[1:]) / 2.0
    local = np.nonzero((hist > 0) & (hist >= np.roll(hist, 1)) & (hist >= np.roll(hist, -1)))[0]
    out: list[tuple[float, float]] = []
    for i in local[np.argsort(-hist[local], kind="stable")]:
        if all(abs(centres[i] - p) >= 20.0 for p, _ in out):
            below = hist < hist[i] / 2.0
            left = next((j for j in range(i, -1, -1) if below[j]), 0)
            right = next((j for j in range(i, hist.size) if below[j]), hist.size - 1)
            out.append((float(centres[i]), float(centres[right] - centres[left]) / 2.355))
        if len(out) == n:
            break
    return out


def _band(smooth: np.ndarray, centre: float, sd: float, quadrant: np.ndarray, spacing, enh: np.ndarray | None
          ) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """The liver's band: `centre` (HU) refined on the deep voxels of the tissue in the quadrant,
    half width BAND_SD times the spread `sd` (at least BAND_MIN_HU); with `enh`, the enhancement
    band of the same voxels."""
    half = min(BAND_MAX_HU, max(BAND_MIN_HU, BAND_SD * sd))
    enh_band = None
    for _ in range(2):
        mask = quadrant & (np.abs(smooth - centre) <= half)
        if not mask.any():
            break
        depth = ndimage.distance_transform_edt(mask, sampling=spacing)
        deep = mask & (depth >= min(8.0, max(depth.max() / 2.0, 1e-6)))
        centre = float(np.average(smooth[deep], weights=depth[deep]))
        if enh is not None:
            e = enh[deep]
            e_mid = float(np.median(e))
            width = min(ENH_BAND_MAX_HU, max(ENH_BAND_MIN_HU, BAND_SD * robust_sd(e)))
            enh_band = (e_mid, width) if e_mid > ENHANCED_MIN_HU else None
    return (centre, half), enh_band


def _fill_small_holes(band: np.ndarray, spacing) -> np.ndarray:
    """The band with, per slice, its enclosed holes up to VESSEL_HOLE_MM2 filled: intrahepatic
    vessels (brighter than parenchyma at portal venous and equilibrium phase) and small lesions,
    which would otherwise cut the liver's core into pieces of their own."""
    _, dy, dx = spacing
    most = max(1, int(VESSEL_HOLE_MM2 / (dy * dx)))
    out = band.copy()
    for k in range(band.shape[0]):
        if not band[k].any():
            continue
        holes, n = ndimage.label(ndimage.binary_fill_holes(band[k]) & ~band[k])
        if n:
            small = np.bincount(holes.ravel(), minlength=n + 1) <= most
            small[0] = False
            out[k] |= small[holes]
    return out


def _cells(band: np.ndarray, spacing, core_mm: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(cells, cores, number of cores). Cores: the band's voxels deeper than `core_mm`, labelled by
    connected piece. Cells: the band's opening at that depth (voxels within `core_mm` + REGAIN_MM
    of a core: what is thinner than twice the depth, a wall or a bowel loop attached to an organ,
    is dropped), each voxel labelled with its nearest core."""
    depth = ndimage.distance_transform_edt(band, sampling=spacing)
    cores, n = ndimage.label(depth >= core_mm)
    if n == 0:
        return cores, cores, 0
    dist, idx = ndimage.distance_transform_edt(cores == 0, sampling=spacing, return_indices=True)
    cells = np.where(band & (dist <= core_mm + REGAIN_MM), cores[tuple(idx)], 0)
    return cells, cores, n


def _cell(cells: np.ndarray, cores: np.ndarray, i: int, sl) -> np.ndarray:
    """Cell `i` within its bounding box `sl`: the part connected to its own core (a part reached
    only across another organ's cell is not the organ)."""
    c = cells[sl] == i
    lab, _ = ndimage.label(c)
    ids = np.unique(lab[cores[sl] == i])
    return np.isin(lab, ids[ids > 0])


def _judge(cell: np.ndarray, offset, frame: _Frame, spacing, nz: int) -> tuple[bool, str, float]:
    """(passes, why not, volume mL) for a candidate liver cell (its box, at `offset`) on the
    coarse grid of `nz` slices."""
    dz, dy, dx = spacing
    zz, yy, xx = (a + o for a, o in zip(np.nonzero(cell), offset))
    volume = zz.size * dz * dy * dx / 1000.0
    left_mm = (xx - frame.x_mid[zz]) * dx          # > 0: patient's left of the midline
    right_mm = -float(np.mean(left_mm))
    if right_mm < RIGHT_OF_MIDLINE_MM:
        return False, f"its centre lies {right_mm:.0f} mm right of the midline", volume
    if frame.spine_front is not None:
        behind_mm = (yy - frame.spine_front[zz]) * dy  # > 0: behind the vertebral body's front
        if float(np.mean(behind_mm)) >= VERTEBRAL_DEPTH_MM:
            return False, "its centre lies behind the vertebral body", volume
        spleen = (left_mm > SPLEEN_ZONE_LEFT_MM) & (behind_mm > 0)
        if spleen.mean() > SPLEEN_ZONE_FRACTION:
            return False, f"{100 * spleen.mean():.0f} % of it lies in the spleen's quadrant", volume
        back = (behind_mm > VERTEBRAL_DEPTH_MM) & (np.abs(left_mm) < PARASPINAL_MM)
        if back.mean() > BEHIND_SPINE_FRACTION:
            return False, f"{100 * back.mean():.0f} % of it lies among the back muscles behind the spine", volume
    if volume > LIVER_MAX_ML:
        return False, f"{volume / 1000:.1f} L, more than any liver", volume
    if zz.min() > 0 and zz.max() < nz - 1 and volume < LIVER_MIN_WHOLE_ML:
        return False, f"a whole organ of {volume:.0f} mL within the scan, too small for a liver", volume
    least = LIVER_MIN_AREA_MM2 * min(nz * dz, LIVER_MIN_HEIGHT_MM) / 1000.0
    if volume < least:
        return False, f"{volume:.0f} mL, less than the {least:.0f} mL a liver fills of this scan", volume
    largest = float(np.bincount(zz).max()) * dy * dx
    if largest < LIVER_MIN_AREA_MM2:
        return False, f"its largest cross-section is {largest / 100:.0f} cm^2, less than a liver's", volume
    return True, "", volume


def _box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, widened by `margin` voxels."""
    out = []
    for axis in range(mask.ndim):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        out.append(slice(max(0, int(hit[0]) - margin), min(mask.shape[axis], int(hit[-1]) + 1 + margin)))
    return tuple(out)


def find_liver_extent(hu: np.ndarray, spacing, body: np.ndarray, spine_x: np.ndarray, spine_front: np.ndarray,
                      unenhanced: np.ndarray | None = None, enhanced: bool = False, refine: bool = True
                      ) -> tuple[LiverFind | None, list[str]]:
    """The liver's extent on `hu`'s grid (see the module docstring), or None and what was found.

    `spine_x` / `spine_front`: per slice the vertebral body's midline column and anterior cortex
    row (index units, NaN where not found; hccnode.imaging.anatomy.find_spine). `unenhanced`, when
    given, is the unenhanced phase registered onto the same grid."""
    grid = _Grid(hu.shape, spacing)
    sp = grid.spacing
    coarse = grid.reduce(hu)
    body_c = grid.reduce_mask(body)
    smooth = _smooth(coarse, sp)
    enh = None if unenhanced is None else smooth - _smooth(grid.reduce(unenhanced), sp)
    frame = _frame(body_c, spine_x, spine_front, grid)
    quadrant = _quadrant(coarse.shape, frame, sp, body_c)
    soft = body_c & (smooth > SOFT_HU[0]) & (smooth < SOFT_HU[1])
    q_soft = quadrant & soft
    if not q_soft.any():
        return None, ["no soft tissue right of the midline in front of the spine"]
    qbox = _box(q_soft, margin=2)
    depth = ndimage.distance_transform_edt(soft[qbox], sampling=sp)
    peaks = _peaks(smooth[qbox][q_soft[qbox]], depth[q_soft[qbox]], PEAKS_TRIED)
    tried: list[str] = []
    for centre, sd in peaks:
        if centre > LIVER_MAX_HU:
            tried.append(f"tissue of {centre:.0f} HU: brighter than liver parenchyma (blood, kidney, oral contrast)")
            continue
        (mid, half), enh_band = _band(smooth[qbox], centre, sd, q_soft[qbox], sp, None if enh is None else enh[qbox])
        if enhanced and enh is None and mid < LIVER_MIN_ENHANCED_HU:
            tried.append(f"tissue of {mid:.0f} HU: water-like in a contrast-enhanced phase (ascites, fluid)")
            continue
        if enh is not None and enh_band is None:
            tried.append(f"tissue of {mid:.0f} HU: enhances too little for a liver (fluid, oral contrast, muscle)")
            continue
        if enh_band is not None and mid - enh_band[0] < SOFT_HU[0]:
            tried.append(f"tissue of {mid:.0f} HU: {mid - enh_band[0]:.0f} HU before contrast, fat rather than liver")
            continue
        band = soft & (np.abs(smooth - mid) <= half)
        if enh_band is not None:
            band &= np.abs(enh - enh_band[0]) <= enh_band[1]
        band = _fill_small_holes(band, sp)
        core = CORE_START_MM
        last_why = "no organ of that attenuation deep enough to be a liver"
        while core <= CORE_MAX_MM:
            cells, cores, n = _cells(band, sp, core)
            if n == 0:
                break
            # the candidate: the cell with most of the right upper quadrant
            in_quadrant = np.bincount(cells[q_soft], minlength=n + 1)
            in_quadrant[0] = 0
            i = int(np.argmax(in_quadrant))
            if in_quadrant[i] * float(np.prod(sp)) / 1000.0 < MIN_CELL_ML:
                break
            sl = ndimage.find_objects((cells == i).astype(np.int8))[0]
            c = _cell(cells, cores, i, sl)
            ok, why, vol = _judge(c, [x.start for x in sl], frame, sp, cells.shape[0])
            if ok:
                organ_c = np.zeros(cells.shape, bool)
                organ_c[sl] = c
                if refine:
                    organ = _refine(hu, spacing, body, grid, organ_c, mid, half, enh_band, unenhanced)
                else:
                    organ = grid.expand(organ_c) & body
                how = (f"organ of {mid:.0f} +/- {half:.0f} HU"
                       + (f" enhancing {enh_band[0]:.0f} +/- {enh_band[1]:.0f} HU" if enh_band else "")
                       + f" on the patient's right, separated from touching organs at {core:.0f} mm depth")
                return LiverFind(organ, _sample(hu, grid, organ_c, organ), (mid, half), enh_band, core, how,
                                 vol), []
            last_why = f"the largest organ of that attenuation on the right: {why}"
            core *= CORE_GROWTH
        tried.append(f"tissue of {mid:.0f} HU: {last_why}")
    return None, tried


def _refine(hu, spacing, body, grid: _Grid, organ_c: np.ndarray, mid: float, half: float,
            enh_band, unenhanced) -> np.ndarray:
    """The coarse cell on the input grid: within one coarse voxel of it, the voxels in the band
    connected to the cell, holes (vessels, lesions) filled per slice. Worked within the cell's box."""
    near_full = grid.expand(ndimage.binary_dilation(organ_c))
    box = _box(near_full, margin=3)
    near = near_full[box]
    smooth = _smooth(hu[box], spacing)
    inside = near & body[box] & (np.abs(smooth - mid) <= half)
    if enh_band is not None and unenhanced is not None:
        inside &= np.abs(smooth - _smooth(unenhanced[box], spacing) - enh_band[0]) <= enh_band[1]
    lab, _ = ndimage.label(inside)
    ids = np.unique(lab[inside & grid.expand(organ_c)[box]])
    part = np.isin(lab, ids[ids > 0])
    for k in range(part.shape[0]):
        if part[k].any():
            part[k] = ndimage.binary_fill_holes(part[k])
    organ = np.zeros(hu.shape, bool)
    organ[box] = part
    return organ


def _sample(hu: np.ndarray, grid: _Grid, organ_c: np.ndarray, organ: np.ndarray) -> np.ndarray:
    """Parenchyma sample (see LiverFind), its depth measured on the search grid."""
    box = _box(organ_c, margin=1)
    depth = np.zeros(organ_c.shape, np.float32)
    depth[box] = ndimage.distance_transform_edt(organ_c[box], sampling=grid.spacing)
    deep = grid.expand(depth >= min(SAMPLE_DEPTH_MM, float(depth.max()) / 2.0)) & organ
    if not deep.any():
        deep = organ
    vals = hu[deep]
    med = float(np.median(vals))
    mad = 1.4826 * float(np.median(np.abs(vals - med))) or 1.0
    return deep & (np.abs(hu - med) <= 2.5 * mad)
