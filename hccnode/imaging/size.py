"""Tumor size from a mask: maximal diameter (mm) and volume (mL).

What the papers measure: paper 003 (Methods "Image analysis") "the maximum tumor diameter was
accurately measured and recorded on the slice with the largest tumor dimension" (mm) - an in-plane
longest diameter, as in (m)RECIST. Paper 002 uses tumor size (mm) on the arterial-phase image with
mRECIST target lesions; its definition table (Supplementary S2) is not in our text. Paper 000 lists
liver cancer diameter (cm) without a definition; paper 004 measures it by ultrasound (cm).
So `max_inplane_diameter_mm` is the one matching the papers; `max_3d_diameter_mm` is reported as
an extra and never substituted for it. mRECIST measures viable (enhancing) tumor only: that
depends on the mask given, not on this module.

Diameters are Feret diameters of the voxel set: the largest distance between voxel centres plus
one voxel extent along that line (so a one-voxel object measures one voxel, edge to edge).
"In-plane" means the slices of the array (axes 1, 2), i.e. the acquisition plane.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError


def volume_ml(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Volume in mL (= cm^3) of the true voxels; `spacing_mm` in array axis order."""
    mask = np.asarray(mask, dtype=bool)
    if len(spacing_mm) != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing_mm)} does not match {mask.ndim} array axes")
    return float(mask.sum()) * float(np.prod(spacing_mm)) / 1000.0


def max_inplane_diameter_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> tuple[float, int]:
    """Longest in-plane diameter (mm) over all slices, and the index (axis 0) of that slice.

    `mask` is 3-D (slice, row, column); `spacing_mm` (slice, row, column) in mm.
    """
    mask = np.asarray(mask, dtype=bool)
    _check(mask, spacing_mm, 3)
    best, best_k = 0.0, -1
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        d = _feret(np.argwhere(mask[k]), np.asarray(spacing_mm[1:], dtype=float))
        if d > best:
            best, best_k = d, int(k)
    if best_k < 0:
        raise ValueError("empty mask: no diameter")
    return best, best_k


def max_3d_diameter_mm(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Longest 3-D diameter (mm) of the mask (not what the papers measure; see module doc)."""
    mask = np.asarray(mask, dtype=bool)
    _check(mask, spacing_mm, 3)
    if not mask.any():
        raise ValueError("empty mask: no diameter")
    return _feret(np.argwhere(mask), np.asarray(spacing_mm, dtype=float))


def _check(mask: np.ndarray, spacing_mm: Sequence[float], ndim: int) -> None:
    if mask.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D mask, got {mask.ndim}-D")
    if len(spacing_mm) != ndim or any(float(s) <= 0 for s in spacing_mm):
        raise ValueError(f"spacing {tuple(spacing_mm)} must be {ndim} positive values (mm)")


def _feret(idx: np.ndarray, spacing: np.ndarray) -> float:
    pts = idx * spacing
    if len(pts) == 1:
        return float(spacing.min())
    if len(pts) > 3:
        try:
            # Joggle (QJ) so flat or collinear voxel sets still give a hull.
            pts = pts[ConvexHull(pts, qhull_options="QJ").vertices]
        except (QhullError, ValueError):
            pass
    diff = pts[:, None, :] - pts[None, :, :]
    d2 = (diff**2).sum(-1)
    i, j = np.unravel_index(np.argmax(d2), d2.shape)
    length = float(np.sqrt(d2[i, j]))
    u = diff[i, j] / length
    # Length of one index step along u, in mm (= the spacing for isotropic voxels).
    return length + 1.0 / float(np.linalg.norm(u / spacing))
