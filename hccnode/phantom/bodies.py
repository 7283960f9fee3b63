"""A family of synthetic abdomens for 4-phase CECT: the second, independent body generator.

Written apart from hccnode.phantom.anatomy (which draws one fixed abdomen of ellipsoids) to test
organ finding on bodies it was not built with (issue 15, point 2). `generate_body(seed)` draws a
body, a scanner and a contrast timing from the seed and returns a `Body`: per phase a float32 HU
volume in LPS array order [z, y, x] (x towards the patient's Left, y Posterior, z index ascending
towards the head; the conventions of hccnode.imaging.anatomy), the truth label map on the same
grid, the hematocrit, the true liver ECV and the true aortic HU per phase.

Geometry (mm, body frame: x Left, y Posterior, z Superior; z = 0 near the hepatic hilum)
--------------------------------------------------------------------------------------------
Organs are implicit surfaces f(x, y, z) < 0 with f roughly a signed distance in mm: ellipsoids
joined by a smooth minimum (liver lobes: right lobe, left lobe, caudate, optional Riedel lobe),
capsules for vessels (branching portal and hepatic venous trees of 4-14 mm calibre, IVC,
aorta), superellipses for the body wall layers, a two-domed diaphragm surface, ribs that run
down and forward around the wall. Shapes are bent by smooth random displacements; a cirrhotic
liver gets a nodular surface. The bowel fills the free peritoneal space where a random smooth
field is above a threshold (little visceral fat in lean and cachectic bodies: organs then touch
bowel, stomach and kidney without a fat plane). The label map is painted in a fixed order, later
structures overwriting earlier ones, so touching organs share a border with no fat between them
unless the body is drawn with fat planes.

Attenuation
-----------
Per tissue and phase from hccnode/data/body_hu.toml (each value cited there). Blood enhancement
at equilibrium is one value for every vessel; the liver parenchyma and tumours at equilibrium
follow paper 001's ECV definition exactly: dHU_tissue = ECV / (1 - HCT) x dHU_blood, so
ECV = (1 - HCT) x dHU_liver / dHU_aorta recovers the truth from parenchyma means, up to noise.
Parenchymal texture is a base-attenuation pattern common to all phases (it cancels in dHU).
Noise: white noise filtered together with the image by a Gaussian point spread (correlated
noise, blurred edges), plus an independent blotchy component of about 3 mm grain (as iterative
reconstruction leaves), a fifth of the variance; total SD 8-30 HU (`noise_sd=0` gives the
noiseless, blurred image, for exact checks). Metal
(clips, coils, spinal rods) adds streaks, the same pattern in every phase.

Scanner
-------
FOV 300-500 mm on a 512 matrix (0.59-0.98 mm pixels), slices 1-5 mm, 20-400 slices, the patient
off-centre, head-first or feet-first supine. `max_matrix` / `max_slices` cap the array for quick
tests by coarsening the pixels / slices over the same field and coverage (then pixels may exceed
1 mm). `Body.stored(phase)` gives the array in its stored order and `Body.direction`,
`Body.origin` the matching SimpleITK geometry (feet-first: columns towards the patient's Right,
slices towards the feet).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from importlib import resources

import numpy as np
from scipy import ndimage

PHASES = ("unenhanced", "arterial", "portal", "equilibrium")


class L(IntEnum):
    """Truth labels. Organ groups (e.g. the liver's vessels) are in `GROUPS`."""

    AIR = 0
    FAT = 1
    MUSCLE = 2            # abdominal and chest wall, psoas
    ERECTOR_SPINAE = 3
    DIAPHRAGM = 4
    LIVER = 5             # parenchyma
    LIVER_PORTAL = 6      # intrahepatic portal vein branches
    LIVER_HEPATIC = 7     # hepatic veins
    TUMOUR = 8
    TUMOUR_NECROSIS = 9
    GALLBLADDER = 10
    AORTA = 11            # lumen
    AORTIC_CALCIUM = 12
    IVC = 13
    PORTAL_VEIN = 14      # extrahepatic (main) portal vein
    SPLEEN = 15
    KIDNEY_CORTEX = 16
    KIDNEY_MEDULLA = 17
    STOMACH_WALL = 18
    STOMACH_CONTENT = 19
    BOWEL_WALL = 20
    BOWEL_CONTENT = 21
    GAS = 22
    ASCITES = 23
    VERTEBRA = 24         # cancellous
    CORTICAL_BONE = 25    # vertebral cortex and posterior elements
    DISC = 26
    SPINAL_CANAL = 27
    RIB = 28
    LUNG = 29
    HEART = 30
    METAL = 31
    TABLE = 32


GROUPS = {
    "liver": (L.LIVER, L.LIVER_PORTAL, L.LIVER_HEPATIC, L.TUMOUR, L.TUMOUR_NECROSIS),
    "liver_vessels": (L.LIVER_PORTAL, L.LIVER_HEPATIC),
    "tumours": (L.TUMOUR, L.TUMOUR_NECROSIS),
    "kidneys": (L.KIDNEY_CORTEX, L.KIDNEY_MEDULLA),
    "stomach": (L.STOMACH_WALL, L.STOMACH_CONTENT),
    "bowel": (L.BOWEL_WALL, L.BOWEL_CONTENT),
    "muscle": (L.MUSCLE, L.ERECTOR_SPINAE, L.DIAPHRAGM),
    "vertebra": (L.VERTEBRA, L.CORTICAL_BONE, L.DISC),
}


@lru_cache(maxsize=1)
def hu_table() -> dict:
    """hccnode/data/body_hu.toml as a dict (tissue ranges and their sources)."""
    raw = resources.files("hccnode.data").joinpath("body_hu.toml").read_bytes()
    return tomllib.loads(raw.decode("utf-8"))


@dataclass
class Tumour:
    centre_mm: tuple[float, float, float]   # body frame (x, y, z)
    diameter_mm: float
    ecv: float
    necrotic: bool


@dataclass
class Body:
    """One generated body. `hu[phase]` and `labels` are LPS arrays [z, y, x] on one grid; with
    `misregister_mm` the labels are those of the equilibrium phase (the others are moved)."""

    seed: int
    hu: dict[str, np.ndarray]
    labels: np.ndarray
    spacing: tuple[float, float, float]       # (dz, dy, dx) mm
    origin_lps: tuple[float, float, float]    # (x, y, z) mm of LPS voxel [0, 0, 0]
    feet_first: bool
    hct: float
    liver_ecv: float                          # fraction
    aorta_hu: dict[str, float]                # true lumen HU per phase (before noise)
    liver_hu: dict[str, float]                # true parenchyma HU per phase (before texture, noise)
    tumours: list[Tumour]
    noise_sd: float                           # total noise SD (HU) of each phase
    noise_sigma_px: float                     # in-plane Gaussian of the point spread / noise
    noise_grain_px: int                       # grain of the blotchy noise component (pixels)
    liver_volume_ml: float                    # whole organ (parenchyma + vessels + tumours)
    features: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)   # as given to generate_body (to render it again)

    @property
    def liver_ecv_percent(self) -> float:
        return 100.0 * self.liver_ecv

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.labels.shape

    def mask(self, *labels: int | str) -> np.ndarray:
        """Boolean mask of labels (L members) or group names from GROUPS."""
        ids: list[int] = []
        for lab in labels:
            ids.extend(int(v) for v in (GROUPS[lab] if isinstance(lab, str) else (lab,)))
        return np.isin(self.labels, ids)

    # -- stored orientation (what a DICOM writer would put in the file) --
    @property
    def direction(self) -> tuple[float, ...]:
        """SimpleITK direction (row-major 3 x 3; column a = patient direction of image axis a)
        of the stored array: head-first identity; feet-first columns to the Right, slices to
        the feet."""
        if self.feet_first:
            return (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def origin(self) -> tuple[float, float, float]:
        """Patient position (LPS mm) of the stored array's first voxel."""
        x0, y0, z0 = self.origin_lps
        if not self.feet_first:
            return (x0, y0, z0)
        nz, _, nx = self.labels.shape
        dz, _, dx = self.spacing
        return (x0 + (nx - 1) * dx, y0, z0 + (nz - 1) * dz)

    def stored(self, phase_or_array) -> np.ndarray:
        """A phase (by name) or any LPS array of this grid in the stored order."""
        a = self.hu[phase_or_array] if isinstance(phase_or_array, str) else phase_or_array
        return a[::-1, :, ::-1] if self.feet_first else a

    def to_sitk(self, phase_or_array):
        """SimpleITK image of a phase (or LPS array) with this body's stored geometry."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(np.ascontiguousarray(self.stored(phase_or_array)))
        dz, dy, dx = self.spacing
        img.SetSpacing((dx, dy, dz))
        img.SetDirection(self.direction)
        img.SetOrigin(self.origin)
        return img


# ------------------------------------------------------------------ implicit shapes

def _ellipsoid(x, y, z, c, r):
    """Approximate signed distance (mm) to an axis-aligned ellipsoid with centre c, radii r."""
    q = np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
    return (q - 1.0) * min(r)


def _smin(a, b, k):
    """Polynomial smooth minimum (union with a fillet of about k mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1.0 - h) + a * h - k * h * (1.0 - h)


def _capsule(x, y, z, a, b, r):
    """Signed distance to a capsule (segment a-b, radius r)."""
    a = np.asarray(a, float)
    ab = np.asarray(b, float) - a
    px, py, pz = x - a[0], y - a[1], z - a[2]
    t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2) - r


def _superellipse(x, y, a, b_ant, b_post, p):
    """Normalised radius of a superellipse (x half-width a, anterior/posterior half-depths)."""
    b = np.where(y < 0, b_ant, b_post)
    return (np.abs(x / a) ** p + np.abs(y / b) ** p) ** (1.0 / p)


class _Waves:
    """A smooth random scalar field: a sum of plane waves, cos(k.p + phase)."""

    def __init__(self, rng, n, wavelength, amplitude):
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        lam = rng.uniform(wavelength[0], wavelength[1], n)
        self.k = d * (2 * np.pi / lam)[:, None]
        self.ph = rng.uniform(0, 2 * np.pi, n)
        self.amp = amplitude / np.sqrt(n / 2.0)

    def __call__(self, x, y, z):
        args = [np.asarray(v, np.float32) for v in (x, y, z)]
        if all(a.ndim == 3 for a in args):
            axes = [[i for i, n in enumerate(a.shape) if n > 1] for a in args]
            if all(len(ax) <= 1 for ax in axes) and len({ax[0] for ax in axes if ax}) == sum(map(bool, axes)):
                return self._on_grid(args, axes)
        return self._general(x, y, z)

    def _on_grid(self, args, axes):
        """The field on a grid given by three 1-D coordinate axes: cos(a0 + a12) summed over the
        waves is Re(E0) Re(E12) - Im(E0) Im(E12), one matrix product over the waves."""
        by_axis = [np.zeros(1, np.float32) for _ in range(3)]
        which = [None, None, None]
        for i, (a, ax) in enumerate(zip(args, axes)):
            if ax:
                by_axis[ax[0]], which[ax[0]] = a.ravel(), i
        free = [i for i in range(3) if i not in which]
        for axis in range(3):
            if which[axis] is None:
                which[axis] = free.pop()
                by_axis[axis] = args[which[axis]].ravel()[:1]
        n0, n1, n2 = (len(v) for v in by_axis)
        e0 = np.exp(1j * (np.outer(by_axis[0], self.k[:, which[0]]) + self.ph[None, :]))          # (n0, T)
        e1 = np.exp(1j * np.outer(by_axis[1], self.k[:, which[1]]))                               # (n1, T)
        e2 = np.exp(1j * np.outer(by_axis[2], self.k[:, which[2]]))                               # (n2, T)
        e12 = (e1[:, None, :] * e2[None, :, :]).reshape(n1 * n2, -1)                             # (n1 n2, T)
        a = np.concatenate([e0.real, -e0.imag], axis=1).astype(np.float32)                       # (n0, 2T)
        b = np.concatenate([e12.real, e12.imag], axis=1).astype(np.float32)                      # (n1 n2, 2T)
        out = (a @ b.T).reshape(n0, n1, n2)
        out *= np.float32(self.amp)
        return out

    def _general(self, x, y, z):
        out = 0.0
        for (kx, ky, kz), ph in zip(self.k, self.ph):
            # separable in complex form: exp(i k.p) = exp(i kx x) exp(i ky y) exp(i kz z)
            e = (np.exp(1j * (kx * x + ph)).astype(np.complex64) * np.exp(1j * ky * y).astype(np.complex64)
                 * np.exp(1j * kz * z).astype(np.complex64))
            out = out + e.real
        return out * np.float32(self.amp)


class _Grid:
    """The scan grid in body-frame mm: 1-D coordinates of columns (x), rows (y), slices (z)."""

    def __init__(self, x, y, z):
        self.x, self.y, self.z = (np.asarray(v, np.float32) for v in (x, y, z))
        self.shape = (len(self.z), len(self.y), len(self.x))

    def box(self, lo, hi):
        """(slices, z, y, x) broadcastable coordinates of the voxels within [lo, hi] (x, y, z mm),
        or None when the box misses the grid."""
        idx = []
        for ax, l, h in ((self.z, lo[2], hi[2]), (self.y, lo[1], hi[1]), (self.x, lo[0], hi[0])):
            i0, i1 = int(np.searchsorted(ax, l, "left")), int(np.searchsorted(ax, h, "right"))
            if i1 <= i0:
                return None
            idx.append(slice(i0, i1))
        sl = tuple(idx)
        return sl, self.z[sl[0]][:, None, None], self.y[sl[1]][None, :, None], self.x[sl[2]][None, None, :]

    def full(self):
        return self.box((-1e9,) * 3, (1e9,) * 3)


# ------------------------------------------------------------------ the body's anatomy


class _Anatomy:
    """The drawn anatomy (all in body-frame mm) and painting of the label map on a grid."""

    def __init__(self, rng, o: dict):
        self.rng = rng
        u = rng.uniform
        self.cirrhotic = o.get("cirrhotic", u() < 0.25)
        self.fatty = (not self.cirrhotic) and o.get("fatty", u() < 0.3)
        self.lean = o.get("lean", u() < (0.6 if self.cirrhotic else 0.35))
        self.ascites = self.cirrhotic and o.get("ascites", u() < 0.8)
        self.splenomegaly = o.get("splenomegaly", self.cirrhotic and u() < 0.8)
        self.fat_planes = o.get("fat_planes", (not self.lean) and u() < 0.4)
        self.riedel = o.get("riedel", u() < 0.2)
        self.gallbladder = o.get("gallbladder", u() < 0.8)
        self.calcified_aorta = o.get("calcified_aorta", u() < 0.5)
        self.metal = o.get("metal", u() < 0.15)
        self.oral_contrast = o.get("oral_contrast", u() < 0.15)
        self.bowel_gas = o.get("bowel_gas", u() < 0.8)

        if "liver_volume_ml" in o:
            self.liver_volume_ml = float(o["liver_volume_ml"])
        elif self.cirrhotic:
            self.liver_volume_ml = u(600, 1300)
        else:
            self.liver_volume_ml = float(np.clip(np.exp(rng.normal(np.log(1600), 0.3)), 800, 3500))
        if not 600 <= self.liver_volume_ml <= 3500:
            raise ValueError(f"liver volume {self.liver_volume_ml} mL outside 600-3500 mL")
        # body wall: superellipse outline, subcutaneous fat, muscle, peritoneal cavity
        # a big liver comes with a big body (and the field of view is chosen to fit the body)
        a_min = 125 + 22 * (self.liver_volume_ml / 1000 - 0.6)
        self.a = u(a_min, a_min + 30) if self.lean else u(a_min + 5, a_min + 60)
        self.a = min(self.a, 235.0, float(o.get("fov_mm", 1e9)) / 2 - 10)
        ratio_ant, ratio_post = u(0.62, 0.82), u(0.85, 1.0)
        self.p = u(2.0, 2.8)
        self.t_sc = u(4, 12) if self.lean else u(12, 45)
        self.t_m = u(7, 14)
        # subcutaneous fat adds to the depth, not to the width only: the inner (muscle-lined)
        # section keeps the proportions of the outline without fat
        inner = self.a - self.t_sc
        self.b_ant = inner * ratio_ant + self.t_sc
        self.b_post = inner * ratio_ant * ratio_post + self.t_sc
        # spine: vertebral body centre
        self.t_back = u(55, 75)
        # the back holds the erector spinae and the vertebra behind a cavity that reaches
        # at least 30 mm behind the body's centre
        self.b_post = max(self.b_post, self.t_sc + self.t_back + 17 + 30)
        self.yv = self.b_post - self.t_sc - self.t_back - 17
        self.rv = (u(18, 24), u(14, 18))
        # diaphragm domes (z of the top of the right and left domes; curvature radius)
        self.zr_dome = u(70, 110)
        self.zl_dome = self.zr_dome - u(10, 30)
        self.dome_rc = u(110, 170)
        self.t_dia = u(3, 6)
        # great vessels
        self.aorta_c = (u(6, 22), self.yv - self.rv[1] - u(12, 16))
        self.aorta_r = u(9, 14)
        self.aorta_tilt = u(-0.05, 0.05)
        self.ivc_c = (u(-32, -18), self.yv - self.rv[1] - u(14, 24))
        self.ivc_r = (u(10, 16), u(7, 12))
        self.waves = _Waves(rng, 4, (80, 200), u(3, 9))
        self.nodules = _Waves(rng, 8, (12, 25), u(1.5, 3.0) if self.cirrhotic else 0.0)
        self.bowel_field = _Waves(rng, 12, (25, 60), 1.0)
        self.gas_field = _Waves(rng, 6, (40, 100), 1.0)
        self.texture = _Waves(rng, 6, (8, 30), u(1, 3) * (2.0 if self.cirrhotic else 1.0))
        self.bowel_threshold = u(-1.3, -0.6) if self.lean else u(-0.6, 0.3)
        self.gas_threshold = u(0.2, 0.9) if self.bowel_gas else 99.0
        self.seeds = [int(v) for v in rng.integers(0, 2 ** 62, size=2)]   # organs, painting
        self._liver_shape(o)
        self._organs(o)
        # organs painted over the liver (kidney, IVC, gallbladder, spleen) take their share:
        # fit the drawn shape once more so the painted organ has the drawn volume
        painted = self.painted_liver_ml()
        for _ in range(3):
            if abs(painted - self.liver_volume_ml) <= 0.03 * self.liver_volume_ml or painted <= 0:
                break
            m, _ = self._liver_mask_coarse(4.0)
            implicit = m.sum() * 64.0 / 1000.0
            self._fit_liver_scale(self.liver_volume_ml * implicit / painted)
            self._organs(o)
            painted = self.painted_liver_ml()
        self.painted_ml = painted

    # -- sub-shapes --
    def cavity_rho(self, x, y):
        """Normalised radius of the peritoneal cavity (inside the wall muscle) at (x, y)."""
        t = self.t_sc + self.t_m
        return _superellipse(x, y, self.a - t, self.b_ant - t, self.b_post - t, self.p)

    def dome_z(self, x, y):
        """z of the diaphragm's (upper) surface above (x, y)."""
        xr, xl = -0.42 * self.a, 0.42 * self.a
        zr = self.zr_dome - ((x - xr) ** 2 + (y - 0.1 * self.b_post) ** 2) / (2 * self.dome_rc)
        zl = self.zl_dome - ((x - xl) ** 2 + (y - 0.1 * self.b_post) ** 2) / (2 * self.dome_rc)
        return np.maximum(zr, zl) - np.clip(y, 0, None) * 0.25   # lower posteriorly (recesses)

    def _liver_shape(self, o):
        u = self.rng.uniform
        cav_a = self.a - self.t_sc - self.t_m
        cav_b = self.b_ant - self.t_sc - self.t_m
        touch_wall = o.get("touch_wall", u() < 0.75)
        self.touch_wall = touch_wall
        # lobes relative to an anchor at the right lobe's centre; radii scaled by `s`
        self.lobes_unit = {
            "right": ((0.0, 0.0, 0.0), (u(65, 80), u(70, 85), u(70, 90))),
            "left": ((u(80, 110), u(-55, -35), u(5, 25)), (u(50, 95), u(28, 40), u(38, 55))),
            "caudate": ((u(45, 55), u(15, 30), u(0, 15)), (u(18, 26), u(16, 22), u(28, 40))),
        }
        if self.riedel:
            self.lobes_unit["riedel"] = ((u(-15, 0), u(-10, 10), u(-95, -70)), (u(28, 38), u(30, 40), u(45, 70)))
        if self.cirrhotic:  # caudate and left lateral hypertrophy, right lobe atrophy
            c, r = self.lobes_unit["caudate"]
            self.lobes_unit["caudate"] = (c, tuple(v * 1.35 for v in r))
            c, r = self.lobes_unit["right"]
            self.lobes_unit["right"] = (c, (r[0] * 0.85, r[1] * 0.9, r[2] * 0.85))
        nv = np.array([u(0.1, 0.4), u(0.3, 0.7), -1.0])
        self.visceral_n = nv / np.linalg.norm(nv)
        self.visceral_depth = u(45, 70)
        push = u(1.0, 1.15) if touch_wall else u(0.75, 0.9)
        # the right lobe's centre lies in front of the level of the vertebral body's front edge
        self.anchor0 = (-cav_a + 72 * push * 0.85, max(-cav_b * 0.4, self.yv - self.rv[1] - u(10, 30)),
                        self.zr_dome - u(60, 80))
        self.s = 1.0
        self._fit_liver_scale(self.liver_volume_ml)

    def liver_f(self, x, y, z):
        """Signed distance (mm, approx) of the liver (before clipping by cavity and diaphragm)."""
        s = self.s
        ax, ay, az = self.anchor0
        xs, ys, zs = x + self.waves(x, y, z), y + self.waves(y, z, x), z + 0.5 * self.waves(z, x, y)
        f = None
        for name, (c, r) in self.lobes_unit.items():
            cc = (ax + c[0] * (1 if name != "right" else 1) * s ** 0.5, ay + c[1] * s ** 0.5, az + c[2] * s ** 0.5)
            fl = _ellipsoid(xs, ys, zs, cc, tuple(v * s for v in r))
            f = fl if f is None else _smin(f, fl, 15.0)
        # the visceral surface: a plane facing down, back and medially cuts the lobes, so the
        # liver is thick under the dome and posteriorly high over the kidney, with a thin
        # anterior-inferior edge (its triangular sagittal section)
        n = self.visceral_n
        p0z = az - self.visceral_depth * s
        f = np.maximum(f, (n[0] * (xs - ax) + n[1] * (ys - ay) + n[2] * (zs - p0z)))
        if self.cirrhotic:
            f = f + self.nodules(x, y, z)
        return f

    def liver_clip(self, x, y, z):
        """Where an organ may be: inside the cavity, below the diaphragm."""
        return (self.cavity_rho(x, y) < 1.0) & (z < self.dome_z(x, y) - self.t_dia)

    def liver_room(self, x, y):
        """Where the liver may lie in the axial plane: in front of the vertebral body's back
        edge; not around the vertebral body; left of the IVC only in front of the aorta (the
        left lateral segment crosses the midline anteriorly; the aorta is retroperitoneal,
        never enclosed; posterior-left belongs to spleen, kidney and stomach)."""
        rx, ry = self.rv
        x_ivc_left = self.ivc_c[0] + self.ivc_r[0]
        y_aorta_front = self.aorta_c[1] - self.aorta_r - 8.0
        # left of the IVC the liver's back edge runs forwards as it goes left (over the lesser
        # sac and the stomach), a diagonal rather than a step
        front = y_aorta_front - 0.6 * np.clip(x - x_ivc_left, 0, None)
        return ((y < self.yv + ry) & ((x <= x_ivc_left) | (y < front))
                & ~((np.abs(x) < rx + 8) & (y > self.yv - ry - 8)))

    def liver_where(self, x, y, z):
        return self.liver_clip(x, y, z) & self.liver_room(x, y)

    def _liver_mask_coarse(self, step=4.0):
        key = (step, self.s)
        if getattr(self, "_coarse_key", None) == key:
            return self._coarse
        g = _coarse_grid(self, step)
        sl, z, y, x = g.full()
        self._coarse_key, self._coarse = key, ((self.liver_f(x, y, z) < 0) & self.liver_where(x, y, z), g)
        return self._coarse

    def painted_liver_ml(self, step=3.0) -> float:
        """Volume (mL) of the liver as painted (parenchyma, vessels, tumours) on a coarse grid."""
        lab = self.paint(_coarse_grid(self, step))
        return float(np.isin(lab, [int(v) for v in GROUPS["liver"]]).sum() * step ** 3 / 1000.0)

    def _fit_liver_scale(self, target):
        for _ in range(8):
            m, g = self._liver_mask_coarse(4.0)
            v = m.sum() * 64.0 / 1000.0
            if abs(v - target) / target < 0.02:
                break
            self.s = min(2.5, self.s * float(np.clip((target / max(v, 1.0)) ** (1 / 3), 0.7, 1.4)))
        return self.s

    def _organs(self, o):
        rng = self.orng = np.random.default_rng(self.seeds[0])
        u = rng.uniform
        ax, ay, az = self.anchor0
        s = self.s
        # liver landmarks
        self.hilum = self._nearest_inside((ax + 40 * s ** 0.5, ay - 5, az - 20 * s ** 0.5), 10.0)
        # kidneys: right kidney's upper pole near the liver's posterior underside
        touch_k = o.get("touch_kidney", u() < 0.7)
        self.touch_kidney = touch_k
        rk = (u(26, 32), u(22, 28), u(48, 60))
        kx, ky = -u(55, 75), self.yv + u(0, 12)
        zliv_low = self._liver_bottom(kx, ky, 15.0)
        if zliv_low is None:
            zliv_low = az - 75 * s
        # upper pole pressed into the liver's underside (touching) or below it with a gap
        ztop = zliv_low + (u(5, 25) if touch_k else -u(10, 30))
        zrk = ztop - rk[2]
        self.kidneys = [((kx, ky, zrk), rk),
                        ((u(55, 75), self.yv + u(0, 12), zrk + u(10, 30)), (u(26, 32), u(22, 28), u(48, 60)))]
        # spleen
        sv = u(1.5, 2.2) if self.splenomegaly else 1.0
        cav_a = self.a - self.t_sc - self.t_m
        self.spleen = ((cav_a - 32 * sv ** 0.5, self.yv - u(5, 25), self.zl_dome - 55 * sv ** 0.5),
                       (u(22, 30) * sv ** 0.6, u(45, 60) * sv ** 0.7, u(45, 60) * sv))
        # stomach: fundus under the left dome, body, antrum towards the pylorus (capsule chain)
        fx = cav_a * u(0.25, 0.45)
        pts = [(fx, u(-20, 5), self.zl_dome - u(35, 50)),
               (fx + u(-10, 15), -self.b_ant * u(0.2, 0.4), self.zl_dome - u(80, 110)),
               (u(-10, 20), -self.b_ant * u(0.35, 0.55), self.zl_dome - u(120, 150)),
               (u(-45, -25), -self.b_ant * u(0.2, 0.4), self.zl_dome - u(130, 160))]
        rad = [u(28, 45), u(22, 35), u(15, 25), u(10, 14)]
        self.stomach = list(zip(pts[:-1], pts[1:], rad[:-1], rad[1:]))
        self.stomach_gas = o.get("stomach_gas", u() < 0.6)
        # gallbladder under the liver, between right and left lobes
        self.gb = ((ax + u(35, 55) * s ** 0.5, ay - u(25, 45) * s ** 0.5, az - u(40, 65) * s ** 0.5),
                   (u(12, 20), u(14, 22), u(28, 45)))
        # portal venous tree from the hilum; hepatic veins into the IVC below the dome
        self.portal_main = ((u(-15, 5), self.ivc_c[1] - u(15, 25), self.hilum[2] - u(35, 55)), self.hilum, u(5.0, 7.0))
        self.portal_tree = self._tree(self.hilum, [(-1, 0.1, 0.1), (1, -0.6, 0.2)], u(4.0, 5.5), s)
        hv_root = self._nearest_inside((self.ivc_c[0] - 10, self.ivc_c[1] - 10, az + 45 * s ** 0.5), 8.0)
        self.hepatic_tree = self._tree(hv_root, [(-1, -0.3, -0.5), (-0.2, -1, -0.6), (0.7, -0.9, -0.2)], u(4.0, 6.0), s)
        # tumours: inside the liver, placed on the coarse liver mask
        n_t = o.get("n_tumours", int(rng.integers(0, 4)))
        self.tumours = self._place_tumours(n_t)
        # ribs: z at the back of each rib, and how far it drops anteriorly
        self.ribs = [(self.zr_dome + 40 - i * u(20, 24), u(90, 130)) for i in range(10)]
        self.costal_x = u(0.1, 0.3)

    def _depth_map(self):
        """Coarse (4 mm) liver mask's depth (mm from its surface) and its grid."""
        if getattr(self, "_depth_key", None) != self.s:
            m, g = self._liver_mask_coarse(4.0)
            self._depth_key, self._depth = self.s, (ndimage.distance_transform_edt(m, sampling=4.0), g)
        return self._depth

    def _depth_at(self, p) -> float:
        d, g = self._depth_map()
        idx = [int(np.clip(np.searchsorted(ax, v) , 0, len(ax) - 1)) for ax, v in ((g.z, p[2]), (g.y, p[1]), (g.x, p[0]))]
        return float(d[tuple(idx)])

    def _nearest_inside(self, p, depth):
        """The point of the liver at least `depth` mm deep nearest to p (p itself if it is)."""
        d, g = self._depth_map()
        ok = np.argwhere(d >= depth)
        if len(ok) == 0:
            ok = np.argwhere(d >= d.max())
        pts = np.stack([g.x[ok[:, 2]], g.y[ok[:, 1]], g.z[ok[:, 0]]], axis=1)
        return tuple(float(v) for v in pts[np.argmin(((pts - np.asarray(p)) ** 2).sum(axis=1))])

    def _liver_bottom(self, x, y, half):
        """Lowest z of the liver within `half` mm of the vertical line at (x, y), or None."""
        m, g = self._liver_mask_coarse(4.0)
        cols = m[:, np.abs(g.y - y) <= half][:, :, np.abs(g.x - x) <= half]
        ks = np.nonzero(cols.any(axis=(1, 2)))[0]
        return float(g.z[ks[0]]) if len(ks) else None

    def _tree(self, root, dirs, r0, s):
        """Capsules of a branching venous tree inside the liver: (a, b, r), radii from r0 down
        to 1.8 mm (calibre 3.6 mm); a branch that would leave the liver tries other directions."""
        u = self.orng.uniform
        segs = []
        stack = [(np.asarray(root, float), np.asarray(d, float) / np.linalg.norm(d), r0) for d in dirs]
        while stack and len(segs) < 120:
            p, d, r = stack.pop(0)
            length = u(15, 30) * s ** 0.3 * (r / 4.0) ** 0.5 + 8
            for _ in range(6):
                dd = d + self.orng.normal(0, 0.35, 3)
                dd /= np.linalg.norm(dd)
                q = p + dd * length
                if self._depth_at(q) >= r + 2:
                    break
            else:
                continue
            segs.append((tuple(p), tuple(q), r))
            r2 = r * u(0.72, 0.88)
            if r2 >= 1.8:
                stack.append((q, dd, r2))
                if u() < 0.7:
                    side = np.cross(dd, self.orng.normal(size=3))
                    stack.append((q, dd + 1.2 * side / np.linalg.norm(side), r2 * u(0.7, 0.95)))
        return segs

    def _place_tumours(self, n):
        if n == 0:
            return []
        m, g = self._liver_mask_coarse(3.0)
        depth = ndimage.distance_transform_edt(m, sampling=3.0)
        out = []
        for _ in range(n):
            d = float(np.exp(self.orng.uniform(np.log(12), np.log(80))))
            ok = np.argwhere(depth >= max(0.5 * d, 8.0))
            if len(ok) == 0:
                ok = np.argwhere(depth >= depth.max() * 0.8)
                d = min(d, 2 * depth.max())
            k, j, i = ok[self.orng.integers(len(ok))]
            c = (float(g.x[i]), float(g.y[j]), float(g.z[k]))
            out.append(Tumour(c, d, float(self.orng.uniform(*hu_table()["ecv"]["tumour"])), d > 40 and self.orng.uniform() < 0.5))
        return out

    # -- painting --
    def paint(self, g: _Grid) -> np.ndarray:
        """The label map on grid `g` (the same body on any grid: painting draws from its own seed)."""
        self.prng = np.random.default_rng(self.seeds[1])
        lab = np.zeros(g.shape, np.uint8)
        sl, z, y, x = g.full()
        x2, y2 = np.broadcast_arrays(x[0], y[0])
        # table: a curved plate below the back
        ytab = self.b_post + 8 + 0.0008 * x2 ** 2
        table2 = (y2 > ytab) & (y2 < ytab + 12) & (np.abs(x2) < 220)
        lab[:, table2] = L.TABLE
        outline = _superellipse(x2, y2, self.a, self.b_ant, self.b_post, self.p)
        # the outline swells slightly above the costal margin and varies along z
        zs = (1.0 + 0.04 * np.tanh((g.z - 20) / 60.0)).astype(np.float32)
        body = outline[None] < zs[:, None, None]
        lab[body] = L.FAT
        t = self.t_sc
        wall = _superellipse(x2, y2, self.a - t, self.b_ant - t, self.b_post - t, self.p)
        lab[(wall[None] < zs[:, None, None])] = L.MUSCLE
        rho_c = self.cavity_rho(x2, y2)
        cav2 = rho_c < 1.0
        dome = self.dome_z(x2, y2)
        above = g.z[:, None, None] > dome[None]
        cav = cav2[None] & (rho_c[None] < zs[:, None, None])
        thorax = cav & above
        abdomen = cav & ~above
        # behind the spine the "cavity" is muscle (paravertebral), not peritoneum
        # around the spine and great vessels: retroperitoneal fat, no bowel
        retro = (y2 > self.yv - self.rv[1] - 4) & (np.abs(x2) < self.rv[0] + 45)
        lab[abdomen] = L.FAT
        # thorax: lungs lateral, mediastinum in the middle
        medi = ((x2 - 10) / (0.3 * self.a)) ** 2 + ((y2 + 0.15 * self.b_ant) / (0.75 * self.b_ant)) ** 2 < 1
        lab[thorax & ~medi[None]] = L.LUNG
        lab[thorax & medi[None]] = L.FAT
        self._heart(g, lab)
        self._ribs(g, lab, rho_c, x2, y2)
        # bowel: free abdominal space where the random field is above the threshold
        self._bowel(g, lab, abdomen & ~retro[None])
        # diaphragm: a shell below the dome surface, within the cavity
        dia = cav & (g.z[:, None, None] <= dome[None]) & (g.z[:, None, None] > dome[None] - self.t_dia)
        lab[dia] = L.DIAPHRAGM
        self._spine(g, lab, x2, y2)
        self._stomach(g, lab)
        liver_box = self._liver(g, lab)
        self._gallbladder(g, lab)
        for segs, label in ((self.portal_tree, L.LIVER_PORTAL), (self.hepatic_tree, L.LIVER_HEPATIC)):
            for a, b, r in segs:
                self._capsule(g, lab, a, b, r, label, only=(L.LIVER,))
        self._capsule(g, lab, *self.portal_main, L.PORTAL_VEIN, only=None, keep=(L.LIVER,))
        self._kidneys(g, lab)
        self._spleen(g, lab)
        self._great_vessels(g, lab, x2, y2)
        self._tumours(g, lab)
        self._fluid_and_planes(g, lab, liver_box)
        lab[~body & (lab != L.TABLE)] = L.AIR
        return lab

    def _paint_f(self, g, lab, lo, hi, f_fn, label, only=None, keep=None):
        b = g.box(lo, hi)
        if b is None:
            return None
        sl, z, y, x = b
        m = f_fn(x, y, z) < 0
        cur = lab[sl]
        if only is not None:
            m &= np.isin(cur, [int(v) for v in only])
        if keep is not None:
            m &= ~np.isin(cur, [int(v) for v in keep])
        cur[m] = label
        return sl, m

    def _capsule(self, g, lab, a, b, r, label, only=None, keep=None):
        lo = np.minimum(a, b) - r - 1
        hi = np.maximum(a, b) + r + 1
        self._paint_f(g, lab, lo, hi, lambda x, y, z: _capsule(x, y, z, a, b, r), label, only, keep)

    def _heart(self, g, lab):
        c = (20.0, -0.25 * self.b_ant, self.zr_dome + 55)
        r = (0.38 * self.a, 0.42 * self.b_ant, 60.0)
        self._paint_f(g, lab, np.subtract(c, r), np.add(c, r), lambda x, y, z: _ellipsoid(x, y, z, c, r),
                      L.HEART, only=(L.FAT, L.LUNG))

    def _ribs(self, g, lab, rho_c, x2, y2):
        t = self.t_sc + self.t_m
        scale = min(self.a - t, self.b_ant - t)
        d = (rho_c - 1.0) * scale          # mm outside the cavity (approx)
        ring = (d > 0.5) & (d < 6.5) & (np.abs(x2) > 22)
        # angle from straight back (0) round either side to straight front (pi)
        theta = np.arccos(np.clip(y2 / np.maximum(np.hypot(x2, y2), 1e-3), -1, 1))
        sinp = np.cos(theta)
        jj, ii = np.nonzero(ring)
        if len(jj) == 0:
            return
        for i, (zpost, drop) in enumerate(self.ribs):
            # a rib runs down at a steady slope from the spine round to its front end
            zr = zpost - drop * theta[jj, ii] / np.pi
            # lower ribs end further from the anterior midline (the costal margin)
            reach = np.abs(x2[jj, ii]) > self.a * (self.costal_x + 0.05 * max(0, i - 6))
            ant = sinp[jj, ii] < -0.2
            keep = ~ant | reach
            ks = np.nonzero((g.z >= zr.min() - 6) & (g.z <= zr.max() + 6))[0]
            if len(ks) == 0:
                continue
            hit = (np.abs(g.z[ks][:, None] - zr[None]) < 4.5) & keep[None]
            kk, pp = np.nonzero(hit)
            lab[ks[kk], jj[pp], ii[pp]] = L.RIB

    def _bowel(self, g, lab, free):
        zmax = self.zr_dome + 5
        b = g.box((-1e9, -1e9, -1e9), (1e9, 1e9, zmax))
        if b is None:
            return
        sl, z, y, x = b
        fr = free[sl]
        f = self.bowel_field(x, y, z)
        wall_w = 0.12
        loop = fr & (f > self.bowel_threshold)
        inner = f > self.bowel_threshold + wall_w
        cur = lab[sl]
        cur[loop & ~inner] = L.BOWEL_WALL
        lumen = loop & inner
        cur[lumen] = L.BOWEL_CONTENT
        if self.bowel_gas:
            gas = lumen & (self.gas_field(x, y, z) - 0.004 * y > self.gas_threshold)
            cur[gas] = L.GAS

    def _spine(self, g, lab, x2, y2):
        yv = self.yv
        rx, ry = self.rv
        body2 = ((x2 / rx) ** 2 + ((y2 - yv) / ry) ** 2) < 1
        cortex2 = body2 & (((x2 / (rx - 2)) ** 2 + ((y2 - yv) / (ry - 2)) ** 2) >= 1)
        yc = yv + ry + 10
        canal2 = (x2 ** 2 + (y2 - yc) ** 2) < 9.5 ** 2
        arch2 = ((x2 ** 2 + (y2 - yc) ** 2) < 16 ** 2) & ~canal2 & (y2 > yv + ry - 2)
        spinous2 = (np.abs(x2) < 4) & (y2 > yc) & (y2 < yc + 45)
        es = [((x2 - sx) / 22) ** 2 + ((y2 - (yc + 18)) / 24) ** 2 < 1 for sx in (-34, 34)]
        es2 = (es[0] | es[1]) & (lab[0] != L.AIR)
        disc = ((g.z - 7) % 34.0) < 8.0
        for m2, label in ((es2, L.ERECTOR_SPINAE), (body2, L.VERTEBRA), (cortex2, L.CORTICAL_BONE),
                          (arch2 | spinous2, L.CORTICAL_BONE), (canal2, L.SPINAL_CANAL)):
            lab[:, m2] = label
        kd = np.nonzero(disc)[0]
        if len(kd):
            sub = lab[kd]
            sub[:, body2] = L.DISC
            lab[kd] = sub
        # psoas below the kidneys' middle, growing inferiorly
        zk = self.kidneys[0][0][2]
        for sx in (-1, 1):
            def f(x, y, z, sx=sx):
                r = np.clip((zk - z) * 0.25 + 8, 0, 28)
                return np.sqrt((x - sx * (rx + r * 0.8)) ** 2 + (y - yv) ** 2) - r
            self._paint_f(g, lab, (-1e9, -1e9, -1e9), (1e9, 1e9, zk), f, L.MUSCLE,
                          only=(L.FAT, L.BOWEL_WALL, L.BOWEL_CONTENT, L.GAS))

    def _stomach(self, g, lab):
        wall = self.prng.uniform(4, 6)
        for a, b, ra, rb in self.stomach:
            r = (ra + rb) / 2
            self._capsule(g, lab, a, b, r, L.STOMACH_WALL, keep=(L.RIB, L.MUSCLE, L.VERTEBRA, L.CORTICAL_BONE))
        for a, b, ra, rb in self.stomach:
            r = (ra + rb) / 2 - wall
            self._capsule(g, lab, a, b, r, L.STOMACH_CONTENT, only=(L.STOMACH_WALL,))
        if self.stomach_gas:
            a = self.stomach[0][0]
            level = a[1] - self.stomach[0][2] * 0.3
            self._paint_f(g, lab, np.subtract(a, 60), np.add(a, 60), lambda x, y, z: y - level + 0 * x * z,  # (full box shape)
                          L.GAS, only=(L.STOMACH_CONTENT,))

    def _liver(self, g, lab):
        m, _ = self._liver_mask_coarse(6.0)
        idx = np.argwhere(m)
        if len(idx) == 0:
            return None
        gc = _coarse_grid(self, 6.0)
        lo = (gc.x[idx[:, 2].min()] - 12, gc.y[idx[:, 1].min()] - 12, gc.z[idx[:, 0].min()] - 12)
        hi = (gc.x[idx[:, 2].max()] + 12, gc.y[idx[:, 1].max()] + 12, gc.z[idx[:, 0].max()] + 12)
        b = g.box(lo, hi)
        if b is None:
            return None
        sl, z, y, x = b
        f = self.liver_f(x, y, z).astype(np.float32)
        m = (f < 0) & self.liver_where(x, y, z)
        cur = lab[sl]
        m &= ~np.isin(cur, [int(v) for v in (L.RIB, L.VERTEBRA, L.CORTICAL_BONE, L.DIAPHRAGM, L.DISC, L.SPINAL_CANAL,
                                               L.ERECTOR_SPINAE, L.MUSCLE)])
        cur[m] = L.LIVER
        return sl, f

    def _gallbladder(self, g, lab):
        if not self.gallbladder:
            return
        c, r = self.gb
        self._paint_f(g, lab, np.subtract(c, r), np.add(c, r), lambda x, y, z: _ellipsoid(x, y, z, c, r),
                      L.GALLBLADDER, keep=(L.RIB, L.MUSCLE, L.DIAPHRAGM, L.VERTEBRA, L.CORTICAL_BONE))

    def _kidneys(self, g, lab):
        bones = (L.RIB, L.VERTEBRA, L.CORTICAL_BONE, L.MUSCLE, L.ERECTOR_SPINAE, L.DIAPHRAGM)
        for c, r in self.kidneys:
            side = np.sign(c[0])
            self._paint_f(g, lab, np.subtract(c, r), np.add(c, r), lambda x, y, z: _ellipsoid(x, y, z, c, r),
                          L.KIDNEY_CORTEX, keep=bones)
            ri = tuple(v - 7 for v in r)
            self._paint_f(g, lab, np.subtract(c, ri), np.add(c, ri), lambda x, y, z: _ellipsoid(x, y, z, c, ri),
                          L.KIDNEY_MEDULLA, only=(L.KIDNEY_CORTEX,))
            cs = (c[0] - side * r[0] * 0.7, c[1] - 4, c[2])
            rs = (r[0] * 0.45, r[1] * 0.5, r[2] * 0.5)
            self._paint_f(g, lab, np.subtract(cs, rs), np.add(cs, rs), lambda x, y, z: _ellipsoid(x, y, z, cs, rs),
                          L.FAT, only=(L.KIDNEY_CORTEX, L.KIDNEY_MEDULLA))

    def _spleen(self, g, lab):
        c, r = self.spleen
        cm = (c[0] - r[0] * 1.2, c[1], c[2])   # concave hilum: subtract an ellipsoid medially
        rm = (r[0] * 0.8, r[1] * 0.6, r[2] * 0.7)

        def f(x, y, z):
            return np.maximum(_ellipsoid(x, y, z, c, r), -_ellipsoid(x, y, z, cm, rm))
        b = self._paint_f(g, lab, np.subtract(c, r), np.add(c, r), f, L.SPLEEN,
                          keep=(L.RIB, L.MUSCLE, L.DIAPHRAGM, L.VERTEBRA, L.CORTICAL_BONE, L.LUNG, L.HEART))
        if b is not None:  # clip to the cavity below the diaphragm
            sl, m = b
            _, z, y, x = g.box(np.subtract(c, r), np.add(c, r))
            out = m & ~self.liver_clip(x, y, z)
            cur = lab[sl]
            cur[out] = L.FAT

    def _great_vessels(self, g, lab, x2, y2):
        ax, ay = self.aorta_c
        dz = g.z[:, None, None] * self.aorta_tilt
        d = np.sqrt((x2[None] - ax - dz) ** 2 + (y2[None] - ay) ** 2)
        lumen = d < self.aorta_r
        # the descending aorta lies behind the heart with fat (and the oesophagus) between
        lab[(d < self.aorta_r + 6) & (lab == L.HEART)] = L.FAT
        lab[lumen] = L.AORTA
        if self.calcified_aorta:
            ang = np.arctan2(y2[None] - ay, x2[None] - ax - dz)
            w = _Waves(self.prng, 5, (25, 70), 1.0)
            plaque = w(ang[..., :1, :1] * 0 + 0, 0, g.z[:, None, None])  # z pattern
            arc = np.cos(ang - self.prng.uniform(0, 2 * np.pi)) > self.prng.uniform(-0.3, 0.6)
            ring = (d >= self.aorta_r - 1.2) & (d < self.aorta_r + 1.5)
            cal = ring & arc & (plaque > self.prng.uniform(0.0, 0.8))
            lab[cal] = L.AORTIC_CALCIUM
        cx, cy = self.ivc_c
        rx, ry = self.ivc_r
        ivc = ((x2 - cx) / rx) ** 2 + ((y2 - cy) / ry) ** 2 < 1
        # the IVC runs from below up to the right atrium, through the liver's bare area
        zs = g.z <= self.zr_dome + 10
        kk = np.nonzero(zs)[0]
        if len(kk):
            sub = lab[kk]
            sub[:, ivc] = L.IVC
            lab[kk] = sub

    def _tumours(self, g, lab):
        for t in self.tumours:
            r = t.diameter_mm / 2
            c = t.centre_mm
            rr = tuple(r * self.prng.uniform(0.85, 1.15) for _ in range(3))
            self._paint_f(g, lab, np.subtract(c, r * 1.3), np.add(c, r * 1.3),
                          lambda x, y, z: _ellipsoid(x, y, z, c, rr), L.TUMOUR, only=GROUPS["liver"])
            if t.necrotic:
                rn = tuple(v * 0.45 for v in rr)
                self._paint_f(g, lab, np.subtract(c, r), np.add(c, r),
                              lambda x, y, z: _ellipsoid(x, y, z, c, rn), L.TUMOUR_NECROSIS, only=(L.TUMOUR,))

    def _fluid_and_planes(self, g, lab, liver_box):
        """Ascites around the liver and spleen; fat planes around the liver when drawn with them."""
        if liver_box is None:
            return
        sl, f = liver_box
        cur = lab[sl]
        soft = np.isin(cur, [int(v) for v in (L.FAT, L.BOWEL_WALL, L.BOWEL_CONTENT, L.GAS)])
        if self.ascites:
            depth = self.prng.uniform(8, 30)
            zb, yb, xb = g.z[sl[0]][:, None, None], g.y[sl[1]][None, :, None], g.x[sl[2]][None, None, :]
            fluid = soft & (f < depth) & (f > -20) & self.liver_clip(xb, yb, zb)
            cur[fluid] = L.ASCITES
            z_all = g.z[sl[0]]
            # gutters and pelvis: free fluid in the low lateral abdomen too
            b = g.box((-1e9, -1e9, -1e9), (1e9, 1e9, float(z_all.min())))
            if b is not None:
                s2, z, y, x = b
                c2 = lab[s2]
                free = np.isin(c2, [int(L.FAT), int(L.BOWEL_CONTENT), int(L.BOWEL_WALL)])
                rho = self.cavity_rho(x, y)
                c2[free & (rho > 0.8) & (rho < 1.0) & (y < self.yv + 10)] = L.ASCITES
        elif self.fat_planes:
            gap = self.prng.uniform(2.5, 6.0)
            others = np.isin(cur, [int(v) for v in (L.BOWEL_WALL, L.BOWEL_CONTENT, L.GAS, L.STOMACH_WALL,
                                                       L.KIDNEY_CORTEX, L.SPLEEN, L.GALLBLADDER)])
            cur[others & (f < gap) & (f > -gap)] = L.FAT
            # the liver's own rim against those organs also gives way to fat
        lab[sl] = cur


def _coarse_grid(anat: _Anatomy, step: float) -> _Grid:
    xs = np.arange(-anat.a - 10, anat.a + 10, step)
    ys = np.arange(-anat.b_ant - 10, anat.b_post + 10, step)
    zs = np.arange(-250, anat.zr_dome + 20, step)
    return _Grid(xs, ys, zs)


# ------------------------------------------------------------------ attenuation


def _draw(rng, tissue: str, key: str) -> float:
    lo, hi = hu_table()["hu"][tissue][key]
    return float(rng.uniform(lo, hi))


def _phase_hu(rng, anat: _Anatomy) -> tuple[dict, dict]:
    """HU per label and phase, the hematocrit, ECVs and the truth to report."""
    ecv = hu_table()["ecv"]
    hct = float(rng.uniform(*(ecv["hematocrit_cirrhotic"] if anat.cirrhotic else ecv["hematocrit"])))
    liver_ecv = float(rng.uniform(*(ecv["liver_cirrhotic"] if anat.cirrhotic else ecv["liver"])))
    blood_u = _draw(rng, "blood", "unenhanced")
    aorta = {"unenhanced": blood_u, **{p: _draw(rng, "aorta", p) for p in PHASES[1:]}}
    # the table's ranges overlap; the blood curve falls after its peak (bae2010)
    lo = hu_table()["hu"]["aorta"]["equilibrium"][0]
    if aorta["equilibrium"] > aorta["portal"] - 10:
        aorta["equilibrium"] = float(rng.uniform(lo, aorta["portal"] - 10))
    d_blood_eq = aorta["equilibrium"] - blood_u
    table = {p: np.zeros(len(L), np.float32) for p in PHASES}

    def put(label, values):
        for p in PHASES:
            table[p][int(label)] = values[p]

    def tissue(name):
        t = hu_table()["hu"][name]
        u0 = _draw(rng, name, "unenhanced")
        return {p: (_draw(rng, name, p) if p in t else u0) for p in PHASES}

    for label, name in ((L.FAT, "fat"), (L.MUSCLE, "muscle"), (L.SPLEEN, "spleen"), (L.KIDNEY_CORTEX, "kidney_cortex"),
                        (L.KIDNEY_MEDULLA, "kidney_medulla"), (L.BOWEL_WALL, "bowel_wall"),
                        (L.STOMACH_WALL, "stomach_wall"), (L.GALLBLADDER, "bile"), (L.VERTEBRA, "vertebra_cancellous"),
                        (L.CORTICAL_BONE, "cortical_bone"), (L.RIB, "rib"), (L.DISC, "disc"),
                        (L.AORTIC_CALCIUM, "aortic_calcium"), (L.LUNG, "lung"), (L.GAS, "gas"), (L.METAL, "metal"),
                        (L.TABLE, "table"), (L.AIR, "air"), (L.TUMOUR_NECROSIS, "tumour_necrosis")):
        put(label, tissue(name))
    muscle = {p: table[p][int(L.MUSCLE)] for p in PHASES}
    put(L.ERECTOR_SPINAE, muscle)
    put(L.DIAPHRAGM, muscle)
    lumen = "oral_contrast" if anat.oral_contrast else rng.choice(["lumen_fluid", "lumen_food"])
    put(L.BOWEL_CONTENT, tissue(str(lumen)))
    put(L.STOMACH_CONTENT, tissue(str(rng.choice(["lumen_fluid", "lumen_food"]))))
    put(L.SPINAL_CANAL, {p: 15.0 for p in PHASES})   # CSF and cord, no enhancement (textbook)
    asc = _draw(rng, "ascites", "unenhanced")
    put(L.ASCITES, {"unenhanced": asc, "arterial": asc, "portal": asc,
                    "equilibrium": asc + _draw(rng, "ascites", "equilibrium_gain")})
    # blood everywhere at equilibrium; vessels by their own timing before
    put(L.AORTA, aorta)
    put(L.HEART, aorta)
    for label, name in ((L.PORTAL_VEIN, "portal_vein"), (L.LIVER_PORTAL, "portal_vein"),
                        (L.LIVER_HEPATIC, "hepatic_vein"), (L.IVC, "ivc")):
        put(label, {"unenhanced": blood_u, "arterial": _draw(rng, name, "arterial") if label != L.LIVER_PORTAL
                    else table["arterial"][int(L.PORTAL_VEIN)],
                    "portal": _draw(rng, name, "portal") if label != L.LIVER_PORTAL else table["portal"][int(L.PORTAL_VEIN)],
                    "equilibrium": aorta["equilibrium"]})
    # liver parenchyma: equilibrium from ECV (paper 001)
    kind = "liver_cirrhotic" if anat.cirrhotic else "liver"
    lu = _draw(rng, "liver_fatty" if anat.fatty else kind, "unenhanced")
    if anat.fatty:  # a fatty liver reads below the spleen before contrast (the table's point)
        lu = min(lu, table["unenhanced"][int(L.SPLEEN)] - 10.0)
    liver = {"unenhanced": lu, "arterial": lu + _draw(rng, kind, "arterial_gain"),
             "portal": lu + _draw(rng, kind, "portal_gain"),
             "equilibrium": lu + liver_ecv / (1.0 - hct) * d_blood_eq}
    put(L.LIVER, liver)
    tumours = []
    for t in anat.tumours:
        tu = _draw(rng, "tumour", "unenhanced")
        tumours.append({"unenhanced": tu, "arterial": tu + _draw(rng, "tumour", "arterial_gain"),
                        "portal": tu + _draw(rng, "tumour", "portal_gain"),
                        "equilibrium": tu + t.ecv / (1.0 - hct) * d_blood_eq})
    if tumours:  # one TUMOUR label: all tumours share the first tumour's values (documented)
        put(L.TUMOUR, tumours[0])
        for t in anat.tumours:
            t.ecv = anat.tumours[0].ecv
    truth = {"hct": hct, "liver_ecv": liver_ecv, "aorta": aorta, "liver": liver}
    return table, truth


def _metal(rng, anat: _Anatomy, g: _Grid, lab: np.ndarray):
    """Paint a metal object; its streaks as (slices, 2-D HU added on each), or None."""
    kind = rng.choice(["clips", "coil", "rods"])
    if kind == "rods":
        cx, cy = (rng.choice([-1, 1]) * 22.0, anat.yv + anat.rv[1] + 25)
        z0, z1 = -150.0, 60.0
        r = 3.0
    else:
        cx, cy, cz = anat.hilum if kind == "clips" else anat.gb[0]
        cx, cy = cx + rng.uniform(-15, 15), cy + rng.uniform(-15, 15)
        z0, z1 = cz - 6, cz + 6
        r = 2.0
    ks = np.nonzero((g.z >= z0) & (g.z <= z1))[0]
    if len(ks) == 0:
        return None
    x2, y2 = np.meshgrid(g.x, g.y)
    d = np.hypot(x2 - cx, y2 - cy)
    m2 = d < r
    sub = lab[ks]
    sub[:, m2] = L.METAL
    lab[ks] = sub
    ang = np.arctan2(y2 - cy, x2 - cx)
    streak = np.zeros_like(d, np.float32)
    for _ in range(int(rng.integers(3, 8))):
        th = rng.uniform(0, np.pi)
        perp = np.abs(np.sin(ang - th)) * d
        streak += rng.uniform(-350, 250) * np.exp(-(perp / rng.uniform(1.5, 4.0)) ** 2)
    streak *= 1.0 / (1.0 + d / 60.0)
    kz = np.nonzero((g.z >= z0 - 3) & (g.z <= z1 + 3))[0]
    streak *= lab[ks[len(ks) // 2]] != L.AIR      # within the body
    return slice(int(kz[0]), int(kz[-1]) + 1), streak.astype(np.float32)


def _gauss_kernel_ss(sigma_px: float) -> float:
    """Sum of squares of the 1-D Gaussian kernel scipy.ndimage uses (truncate 4)."""
    r = int(4.0 * sigma_px + 0.5)
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2)
    w /= w.sum()
    return float((w ** 2).sum())


OVERRIDES = {
    "max_matrix", "max_slices", "matrix", "fov_mm", "slice_mm", "n_slices", "z_centre_mm", "noise_sd", "feet_first",
    "offset_mm", "misregister_mm", "metal", "cirrhotic", "fatty", "lean", "ascites", "splenomegaly", "fat_planes",
    "riedel", "gallbladder", "calcified_aorta", "oral_contrast", "bowel_gas", "stomach_gas", "touch_wall",
    "touch_kidney", "liver_volume_ml", "n_tumours",
}


def generate_body(seed: int, **overrides) -> Body:
    """A random body for `seed`. Overrides (all optional): max_matrix, max_slices, matrix,
    fov_mm, slice_mm, n_slices, z_centre_mm, noise_sd, feet_first, offset_mm (x, y),
    misregister_mm (largest rigid shift per axis of each phase other than equilibrium, by whole
    voxels of the label map; default 0: phases registered), metal, and the anatomy flags
    cirrhotic, fatty, lean, ascites, splenomegaly, fat_planes, riedel, gallbladder,
    calcified_aorta, oral_contrast, bowel_gas, stomach_gas, touch_wall, touch_kidney,
    liver_volume_ml, n_tumours."""
    o = dict(overrides)
    unknown = set(o) - OVERRIDES
    if unknown:
        raise ValueError(f"unknown body options: {', '.join(sorted(unknown))}")
    rng = np.random.default_rng([int(seed), 15])
    u = rng.uniform
    anat = _Anatomy(rng, o)
    fov = float(o.get("fov_mm", u(max(300.0, 2 * anat.a + 20), 500)))
    # scanner
    matrix = int(o.get("matrix", 512))
    matrix = min(matrix, int(o.get("max_matrix", matrix)))
    dx = fov / matrix
    dz = float(o.get("slice_mm", rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0])))
    cover = u(120, 420)
    n = int(o.get("n_slices", int(np.clip(round(cover / dz), 20, 400))))
    if "max_slices" in o and n > int(o["max_slices"]):
        dz = dz * n / int(o["max_slices"])
        n = int(o["max_slices"])
    room_x = max(0.0, fov / 2 - anat.a - 5)
    room_y = max(0.0, fov / 2 - max(anat.b_ant, anat.b_post + 25) - 5)
    off = o.get("offset_mm", (u(-1, 1) * min(40, room_x), u(-1, 1) * min(40, room_y)))
    liver_z = anat.anchor0[2] - 20
    zc = liver_z + u(-50, 50) if "z_centre_mm" not in o else float(o["z_centre_mm"])
    zs = zc + (np.arange(n) - (n - 1) / 2) * dz
    xs = (np.arange(matrix) - (matrix - 1) / 2) * dx - off[0]
    ys = (np.arange(matrix) - (matrix - 1) / 2) * dx - off[1]
    g = _Grid(xs, ys, zs)
    labels = anat.paint(g)
    metal = anat.metal and o.get("metal", True)
    streaks = _metal(rng, anat, g, labels) if metal else None
    table, truth = _phase_hu(rng, anat)
    # texture: base attenuation pattern of the parenchyma (same every phase)
    noise_sd = float(o.get("noise_sd", u(8, 30)))
    sigma_mm = u(0.5, 0.9)
    sigma_px = max(0.5, sigma_mm / dx)
    blotch_px = max(2, int(round(3.0 / dx)))
    liver_m = labels == L.LIVER
    tex = None
    if liver_m.any():
        kk = np.nonzero(liver_m.any(axis=(1, 2)))[0]
        kk = slice(int(kk[0]), int(kk[-1]) + 1)
        tex = anat.texture(g.x[None, None, :], g.y[None, :, None], g.z[kk][:, None, None]).astype(np.float32)
    misreg = float(o.get("misregister_mm", 0.0))
    hu = {}
    for p in PHASES:
        lab_p = labels
        if misreg > 0 and p != "equilibrium":
            lab_p = _shifted(labels, rng.uniform(-misreg, misreg, 3) / np.array(g_spacing(g)), order=0)
        img = table[p][lab_p]
        if tex is not None:
            img[kk] += np.where(lab_p[kk] == L.LIVER, tex, np.float32(0))
        if streaks is not None:
            img[streaks[0]] += streaks[1]
        if noise_sd > 0:
            _add_noise(rng, img, noise_sd, sigma_px, blotch_px)
        _point_spread(img, sigma_px)
        np.clip(img, -1024, 3071, out=img)
        hu[p] = img
    vol = anat.painted_ml
    features = _features(anat, labels, g, dx, dz, fov, matrix, n, noise_sd, off, metal)
    return Body(
        seed=int(seed), hu=hu, labels=labels, spacing=(float(dz), float(dx), float(dx)),
        origin_lps=(float(g.x[0]), float(g.y[0]), float(g.z[0])),
        feet_first=bool(o.get("feet_first", u() < 0.3)), hct=truth["hct"], liver_ecv=truth["liver_ecv"],
        aorta_hu={p: float(v) for p, v in truth["aorta"].items()},
        liver_hu={p: float(v) for p, v in truth["liver"].items()}, tumours=anat.tumours,
        noise_sd=noise_sd, noise_sigma_px=float(sigma_px), noise_grain_px=blotch_px, liver_volume_ml=vol, features=features,
        overrides=dict(overrides))


def g_spacing(g: _Grid):
    return (float(g.z[1] - g.z[0]) if len(g.z) > 1 else 1.0, float(g.y[1] - g.y[0]), float(g.x[1] - g.x[0]))


def _shifted(lab, shift_vox, order=0):
    return ndimage.shift(lab, shift_vox, order=order, mode="nearest")


def _add_noise(rng, img: np.ndarray, noise_sd: float, sigma_px: float, grain_px: int) -> None:
    """Add the scanner's noise to `img` (in place), before the point spread filter
    (`_point_spread`), so that it reads `noise_sd` HU after it: 80 % of the variance white, 20 %
    blotchy of `grain_px` grain."""
    white_sd = np.sqrt(0.8) * noise_sd / _gauss_kernel_ss(sigma_px)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise *= np.float32(white_sd)
    img += noise
    del noise
    _add_blotches(rng, img, grain_px, np.sqrt(0.2) * noise_sd)


def _point_spread(img: np.ndarray, sigma_px: float) -> None:
    """The in-plane point spread of the scanner: a Gaussian of `sigma_px` pixels (in place)."""
    ndimage.gaussian_filter1d(img, sigma_px, axis=1, output=img, mode="nearest")
    ndimage.gaussian_filter1d(img, sigma_px, axis=2, output=img, mode="nearest")


def fresh_noise(body: Body, rng) -> np.ndarray:
    """A new draw of `body`'s noise as it reads on the image (after the point spread filter):
    added to the same body rendered without noise (`generate_body(seed, noise_sd=0, ...)`), it
    gives the body again with noise independent of the first (clipping to -1024..3071 HU aside)."""
    field = np.zeros(body.hu["equilibrium"].shape, np.float32)
    _add_noise(rng, field, body.noise_sd, body.noise_sigma_px, body.noise_grain_px)
    _point_spread(field, body.noise_sigma_px)
    return field


def _add_blotches(rng, img: np.ndarray, grain_px: int, sd: float) -> None:
    """Add in-plane noise of `grain_px` grain to `img` (in place): a coarse white field per
    slice, interpolated linearly along the columns and held over `grain_px` rows (the point
    spread filter applied afterwards softens the row steps), scaled to SD `sd`."""
    nz, ny, nx = img.shape
    rows = -(-ny // grain_px)
    c = rng.standard_normal((nz, rows, -(-nx // grain_px) + 1)).astype(np.float32)
    # linear interpolation of unit white noise has variance 2/3 on average over a cell
    c *= np.float32(sd * np.sqrt(1.5))
    i0, i1, t = _interp_weights(nx, c.shape[2])
    c = c[:, :, i0] * (1 - t) + c[:, :, i1] * t                          # (nz, rows, nx)
    full = ny // grain_px
    img[:, :full * grain_px].reshape(nz, full, grain_px, nx)[...] += c[:, :full, None, :]
    if full < rows:
        img[:, full * grain_px:] += c[:, full:full + 1]


def _interp_weights(n: int, m: int):
    """Indices and weights of linear interpolation from m samples spread over n."""
    pos = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
    i0 = np.floor(pos).astype(int)
    return i0, np.minimum(i0 + 1, m - 1), (pos - i0).astype(np.float32)


def _features(anat, labels, g, dx, dz, fov, matrix, n, noise_sd, off, metal) -> dict:
    liver = labels == L.LIVER
    has = {name: bool(np.isin(labels, [int(v) for v in ids]).any()) for name, ids in
           (("kidney", GROUPS["kidneys"]), ("stomach", GROUPS["stomach"]), ("bowel", GROUPS["bowel"]))}
    touch = {}
    if liver.any():
        kk = np.nonzero(liver.any(axis=(1, 2)))[0]
        k0, k1 = max(0, kk[0] - 1), kk[-1] + 2
        sub = labels[k0:k1]
        lm = sub == L.LIVER
        grown = ndimage.binary_dilation(lm, ndimage.generate_binary_structure(3, 1))
        near = set(np.unique(sub[grown & ~lm]).tolist())
        for name, ids in (("kidney", GROUPS["kidneys"]), ("stomach", GROUPS["stomach"]), ("bowel", GROUPS["bowel"]),
                          ("diaphragm", (L.DIAPHRAGM,)), ("abdominal_wall", (L.MUSCLE,)), ("spleen", (L.SPLEEN,)),
                          ("ascites", (L.ASCITES,))):
            touch[name] = bool(near & {int(v) for v in ids})
    return {
        "cirrhotic": anat.cirrhotic, "fatty": anat.fatty, "lean": anat.lean, "ascites": anat.ascites,
        "splenomegaly": anat.splenomegaly, "fat_planes": anat.fat_planes, "riedel": anat.riedel,
        "calcified_aorta": anat.calcified_aorta, "metal": bool(metal), "oral_contrast": anat.oral_contrast,
        "bowel_gas": anat.bowel_gas, "gallbladder": anat.gallbladder, "n_tumours": len(anat.tumours),
        "liver_target_ml": anat.liver_volume_ml,
        "liver_in_scan_ml": float(liver.sum() * dx * dx * dz / 1000.0),
        "liver_touches": touch, "fov_mm": fov, "matrix": matrix, "slices": n, "slice_mm": dz,
        "pixel_mm": dx, "noise_sd": noise_sd, "offset_mm": tuple(float(v) for v in off), **{f"has_{k}": v for k, v in has.items()},
    }
