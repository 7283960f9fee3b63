"""Analytic abdomen at the level of the liver, evaluated slice by slice in patient coordinates.

Coordinates are DICOM LPS in mm: +x towards the patient's left, +y posterior, +z superior.
The body centre at the liver dome level is the origin. In the standard axial display (columns
along +x, rows along +y) the liver, on the patient's right, appears on the image left, the
spine at the bottom and the aorta just anterior and to the left of the vertebral body.

Shapes are ellipsoids / elliptic cylinders; a label map is painted in a fixed order so later
structures overwrite earlier ones (tumor inside liver, vessels inside liver). Misregistration
is applied by moving the shapes (a rigid transform of the sample points), so every phase is
exact, with no resampling blur.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class Label(IntEnum):
    AIR = 0
    FAT = 1          # body outline filled with subcutaneous / visceral fat-soft tissue mix
    LIVER = 2
    SPLEEN = 3
    AORTA = 4
    PORTAL_VEIN = 5
    HEPATIC_VEIN = 6
    VERTEBRA = 7
    ERECTOR_SPINAE = 8
    TUMOR = 9        # first tumor; further tumors get TUMOR + i


@dataclass(frozen=True)
class Tumor:
    """A spherical tumor: centre in mm (LPS, relative to the liver-level origin), diameter in mm."""

    diameter_mm: float
    center_mm: tuple[float, float, float] = (-70.0, -5.0, 0.0)

    @property
    def volume_ml(self) -> float:
        r_cm = self.diameter_mm / 20.0
        return 4.0 / 3.0 * np.pi * r_cm**3


@dataclass(frozen=True)
class Motion:
    """Rigid misregistration of the anatomy: shift in mm (x, y, z) and rotation about z in degrees."""

    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation_deg: float = 0.0

    def body_points(self, x: np.ndarray, y: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Map scanner-space sample points into body coordinates (inverse of moving the body)."""
        dx, dy, dz = self.shift_mm
        x, y, z = x - dx, y - dy, z - dz
        if self.rotation_deg:
            a = np.deg2rad(-self.rotation_deg)
            c, s = np.cos(a), np.sin(a)
            x, y = c * x - s * y, s * x + c * y
        return x, y, z


# Shapes in body coordinates (mm). Elliptic cylinders ignore z; ellipsoids use it.
BODY = dict(c=(0.0, 0.0), r=(165.0, 120.0))
LIVER = dict(c=(-62.0, -12.0, 0.0), r=(78.0, 80.0, 95.0))
SPLEEN = dict(c=(92.0, 48.0, 10.0), r=(30.0, 48.0, 55.0))
AORTA = dict(c=(22.0, 16.0), r=(12.0, 12.0))
VERTEBRA = dict(c=(0.0, 52.0), r=(21.0, 19.0))
ERECTOR = [dict(c=(-36.0, 92.0), r=(20.0, 14.0)), dict(c=(36.0, 92.0), r=(20.0, 14.0))]
PORTAL_VEIN = dict(c=(-30.0, 10.0, -20.0), r=(22.0, 7.0, 7.0))  # oblique-ish branch at the hilum
HEPATIC_VEINS = [dict(c=(-40.0, 20.0), r=(5.0, 5.0)), dict(c=(-95.0, 5.0), r=(5.0, 5.0))]
HEPATIC_VEIN_Z = (0.0, 90.0)  # hepatic veins run in the upper liver only


def _in_ellipse(x, y, c, r):
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 <= 1.0


def _in_ellipsoid(x, y, z, c, r):
    return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0


def label_slice(x: np.ndarray, y: np.ndarray, z: float, tumors: list[Tumor], vessels: bool = True,
                motion: Motion | None = None) -> np.ndarray:
    """Label map (uint8, values of `Label`, tumors TUMOR+i) at scanner points x, y (mm) on plane z (mm)."""
    if motion is not None:
        x, y, z = motion.body_points(x, y, z)
    lab = np.zeros(np.broadcast(x, y).shape, dtype=np.uint8)
    lab[_in_ellipse(x, y, **BODY)] = Label.FAT
    liver = _in_ellipsoid(x, y, z, **LIVER)
    lab[liver] = Label.LIVER
    lab[_in_ellipsoid(x, y, z, **SPLEEN)] = Label.SPLEEN
    if vessels:
        lab[liver & _in_ellipsoid(x, y, z, **PORTAL_VEIN)] = Label.PORTAL_VEIN
        if HEPATIC_VEIN_Z[0] <= z <= HEPATIC_VEIN_Z[1]:
            for hv in HEPATIC_VEINS:
                lab[liver & _in_ellipse(x, y, **hv)] = Label.HEPATIC_VEIN
    for i, t in enumerate(tumors):
        lab[_in_ellipsoid(x, y, z, t.center_mm, (t.diameter_mm / 2.0,) * 3)] = Label.TUMOR + i
    lab[_in_ellipse(x, y, **AORTA)] = Label.AORTA
    lab[_in_ellipse(x, y, **VERTEBRA)] = Label.VERTEBRA
    for m in ERECTOR:
        lab[_in_ellipse(x, y, **m)] = Label.ERECTOR_SPINAE
    return lab


def tumor_fits_liver(t: Tumor) -> bool:
    """True when the whole tumor sphere lies inside the liver ellipsoid (checked on its surface)."""
    u = np.linspace(0, np.pi, 13)
    v = np.linspace(0, 2 * np.pi, 25)
    r = t.diameter_mm / 2.0
    uu, vv = np.meshgrid(u, v)
    px = t.center_mm[0] + r * np.sin(uu) * np.cos(vv)
    py = t.center_mm[1] + r * np.sin(uu) * np.sin(vv)
    pz = t.center_mm[2] + r * np.cos(uu)
    c, rr = LIVER["c"], LIVER["r"]
    return bool(np.all(((px - c[0]) / rr[0]) ** 2 + ((py - c[1]) / rr[1]) ** 2 + ((pz - c[2]) / rr[2]) ** 2 <= 1.0))
