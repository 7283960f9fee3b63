"""Minimal synthetic axial CT volumes for anatomy and phase-confirmation tests (our own, simple).

LPS in-plane convention: x (columns) towards patient Left, y (rows) towards Posterior.
Shapes are ellipses; values in HU; optional Gaussian noise.
"""

from __future__ import annotations

import numpy as np

# Typical attenuation (HU) of blood and liver by phase, from general CT experience; used only
# to make test images, never by the classifier.
PHASE_HU = {
    "unenhanced": {"aorta": 42.0, "liver": 58.0},
    "arterial": {"aorta": 320.0, "liver": 75.0},
    "portal_venous": {"aorta": 180.0, "liver": 112.0},
    "equilibrium": {"aorta": 135.0, "liver": 100.0},
}


def abdomen(n=96, slices=12, pixel_mm=3.8, aorta_hu=42.0, liver_hu=58.0, noise=8.0, seed=0,
            aorta_xy=(20.0, 18.0), aorta_r=12.0,   # radius mm, or (rx, ry)
            vertebra_xy=(0.0, 55.0), shift=(0.0, 0.0),
            bone_hu=450.0, liver_right=True):
    """Volume [z, y, x] in HU and the true aorta centre (row, col) index; positions in mm from
    the image centre (x left, y posterior), moved together by `shift`."""
    rng = np.random.default_rng(seed)
    c = (np.arange(n) - (n - 1) / 2.0) * pixel_mm
    y, x = np.meshgrid(c, c, indexing="ij")
    x = x - shift[0]
    y = y - shift[1]
    img = np.full((n, n), -1000.0)
    def ell(cx, cy, rx, ry):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    img[ell(0, 0, 160, 115)] = -100.0            # fat
    img[ell(0, 0, 160, 115) & ~ell(0, 0, 150, 105)] = 40.0   # muscle wall
    lx = -60.0 if liver_right else 60.0
    img[ell(lx, -10, 75, 75)] = liver_hu
    img[ell(-lx * 1.4, 45, 28, 40)] = 48.0       # spleen on the other side
    img[ell(*vertebra_xy, 22, 19)] = bone_hu
    img[ell(vertebra_xy[0], vertebra_xy[1] + 30, 8, 12)] = bone_hu   # posterior arch
    img[ell(-35, 95, 18, 12)] = 50.0
    img[ell(35, 95, 18, 12)] = 50.0
    rx, ry = aorta_r if isinstance(aorta_r, tuple) else (aorta_r, aorta_r)
    img[ell(*aorta_xy, rx, ry)] = aorta_hu
    vol = np.repeat(img[None], slices, axis=0)
    vol = vol + rng.normal(0.0, noise, vol.shape)
    row = (aorta_xy[1] + shift[1]) / pixel_mm + (n - 1) / 2.0
    col = (aorta_xy[0] + shift[0]) / pixel_mm + (n - 1) / 2.0
    return vol.astype(np.float32), (row, col)


def phase_volume(phase: str, **kw):
    v = PHASE_HU[phase]
    return abdomen(aorta_hu=v["aorta"], liver_hu=v["liver"], **kw)
