"""Extracellular volume fraction (ECV).

CECT, paper 001 (papers/001_c4ba0269da651d59.txt, Methods "Extracellular volume fraction
analysis"): unenhanced and equilibrium (120-180 s) images; tumor ROI at the level of the
maximum HCC diameter, as large as possible, avoiding necrosis and hemorrhage; three liver ROIs
(~100 mm^2 each: right anterior, right posterior, left lateral segments) "with their average taken
as the liver CT value", i.e. the HU values are averaged, then one liver ECV is computed; aortic ROI
(~100 mm^2) at the same level (tumor plane or liver plane). Hematocrit within 1 week of the CT.

    ECV (%) = (1 - HCT) x dHU_tissue / dHU_aorta x 100,  dHU = HU_equilibrium - HU_unenhanced.

DECT, paper 000 (papers/000_1e01a252ba479b1c.txt, Methods 2.2): ECV = NIC x (1 - HCT), NIC from
the equilibrium iodine map (see nic.py); HCT from the 48 h before the examination; ECV reported
as a fraction (cutoff 0.45).

HCT is a volume fraction (L/L) everywhere in this module; `hct_fraction` converts from percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from hccnode.imaging.boxed import BoxedArray
from hccnode.imaging.nic import nic_ratio
from hccnode.imaging.roi_stats import bounding_box, mean_of_rois

# Gaussian sigma (mm) applied inside the mask to both phases before subtraction in the ECV map.
# 1.5 mm is the slice thickness of paper 001's protocol: it halves voxel noise without blurring
# beyond the acquired resolution. The papers publish no map, so this is our choice, not theirs.
DEFAULT_MAP_SIGMA_MM = 1.5

HCT_UNITS_FRACTION = {"L/L", "l/l", "1", "fraction"}
HCT_UNITS_PERCENT = {"%", "percent"}


def hct_fraction(value: float, unit: str) -> float:
    """Hematocrit as a fraction (L/L) from a value in L/L ('L/L', '1') or percent ('%').

    No unit is guessed from the magnitude: 42 with unit 'L/L' is refused, not divided by 100.
    """
    if unit in HCT_UNITS_PERCENT:
        f = float(value) / 100.0
    elif unit in HCT_UNITS_FRACTION:
        f = float(value)
    else:
        raise ValueError(f"hematocrit unit {unit!r} not understood; expected 'L/L', '1' or '%'")
    if not (0.0 < f < 1.0):
        raise ValueError(f"hematocrit {value} {unit} is {f} L/L, outside (0, 1); check the unit")
    return f


def delta_hu(equilibrium_hu: float, unenhanced_hu: float) -> float:
    """Enhancement dHU = HU_equilibrium - HU_unenhanced (HU). Paper 001."""
    return float(equilibrium_hu) - float(unenhanced_hu)


def ecv_cect_percent(delta_hu_tissue: float, delta_hu_aorta: float, hct: float) -> float:
    """ECV (%) = (1 - HCT) x dHU_tissue / dHU_aorta x 100. Paper 001, Methods "Extracellular
    volume fraction analysis". dHU in HU; `hct` a fraction (L/L)."""
    _check_hct(hct)
    if not np.isfinite(delta_hu_aorta) or delta_hu_aorta <= 0:
        raise ValueError(f"aortic enhancement must be > 0 HU, got {delta_hu_aorta} HU")
    if not np.isfinite(delta_hu_tissue):
        raise ValueError(f"tissue enhancement is not finite: {delta_hu_tissue}")
    return (1.0 - hct) * float(delta_hu_tissue) / float(delta_hu_aorta) * 100.0


def ecv_dect_fraction(nic: float, hct: float) -> float:
    """ECV (fraction) = NIC x (1 - HCT). Paper 000, Methods 2.2. `hct` a fraction (L/L)."""
    _check_hct(hct)
    if not np.isfinite(nic):
        raise ValueError(f"NIC is not finite: {nic}")
    return float(nic) * (1.0 - hct)


def _check_hct(hct: float) -> None:
    if not (np.isfinite(hct) and 0.0 < hct < 1.0):
        raise ValueError(f"hematocrit must be a fraction in (0, 1) L/L, got {hct}")


@dataclass(frozen=True)
class CectEcv:
    """Paper 001 result. `ecv_percent` is None when it cannot be computed; `missing_reason` says
    why. The enhancements are reported either way (HU)."""

    delta_hu_tissue: float
    delta_hu_aorta: float
    ecv_percent: float | None
    missing_reason: str | None = None


@dataclass(frozen=True)
class DectEcv:
    """Paper 000 result. NIC is reported even when ECV is missing (e.g. no hematocrit)."""

    nic: float
    ecv_fraction: float | None
    missing_reason: str | None = None


def cect_ecv(
    tissue_unenhanced_hu: float | Sequence[float],
    tissue_equilibrium_hu: float | Sequence[float],
    aorta_unenhanced_hu: float,
    aorta_equilibrium_hu: float,
    hct: float | None,
    hct_missing_reason: str = "no hematocrit available",
) -> CectEcv:
    """Paper 001 ECV for one tissue. Tissue HUs may be one ROI mean (tumor) or a sequence of ROI
    means (the three liver ROIs), which are averaged per phase as the paper does. With a single
    aortic dHU this equals the mean of per-ROI ECVs, since ECV is linear in dHU_tissue."""
    d_tissue = delta_hu(_mean(tissue_equilibrium_hu), _mean(tissue_unenhanced_hu))
    d_aorta = delta_hu(aorta_equilibrium_hu, aorta_unenhanced_hu)
    if hct is None:
        return CectEcv(d_tissue, d_aorta, None, hct_missing_reason)
    if d_aorta <= 0:
        return CectEcv(d_tissue, d_aorta, None, f"aortic enhancement {d_aorta:.1f} HU is not positive")
    return CectEcv(d_tissue, d_aorta, ecv_cect_percent(d_tissue, d_aorta, hct))


def dect_ecv(
    ic_lesion_mg_ml: float | Sequence[float],
    ic_aorta_mg_ml: float,
    hct: float | None,
    hct_missing_reason: str = "no hematocrit available",
) -> DectEcv:
    """Paper 000 NIC and ECV. `ic_lesion_mg_ml` may be the three lesion ROI means (averaged)."""
    nic = nic_ratio(_mean(ic_lesion_mg_ml), ic_aorta_mg_ml)
    if hct is None:
        return DectEcv(nic, None, hct_missing_reason)
    return DectEcv(nic, ecv_dect_fraction(nic, hct))


def _mean(v: float | Sequence[float]) -> float:
    return mean_of_rois(v) if isinstance(v, (list, tuple, np.ndarray)) else float(v)


def ecv_map_percent(
    unenhanced_hu: np.ndarray,
    equilibrium_hu: np.ndarray,
    mask: np.ndarray,
    delta_hu_aorta: float,
    hct: float,
    spacing_mm: Sequence[float],
    sigma_mm: float = DEFAULT_MAP_SIGMA_MM,
) -> np.ndarray:
    """Voxelwise paper-001 ECV (%) over `mask`, NaN outside it (float32 array, same shape).

    Both volumes must already be registered to the same grid. `spacing_mm` is given in array
    axis order (for a SimpleITK array: z, y, x). Each phase is smoothed with a Gaussian of
    `sigma_mm` restricted to the mask (normalised convolution: sum(w*I*m)/sum(w*m)) so that
    vessels, fat or air outside the mask do not bleed into edge voxels; sigma_mm=0 disables it.
    """
    return np.asarray(ecv_map_boxed(unenhanced_hu, equilibrium_hu, mask, delta_hu_aorta, hct, spacing_mm, sigma_mm))


def ecv_map_boxed(
    unenhanced_hu: np.ndarray | BoxedArray,
    equilibrium_hu: np.ndarray | BoxedArray,
    mask: np.ndarray,
    delta_hu_aorta: float,
    hct: float,
    spacing_mm: Sequence[float],
    sigma_mm: float = DEFAULT_MAP_SIGMA_MM,
) -> BoxedArray:
    """`ecv_map_percent` without its full-size array: the values over the mask's bounding box
    (widened by the smoothing's reach), NaN elsewhere. The phases may be BoxedArrays too (a phase
    resampled within the ROIs' boxes); only the mask's box of each is read."""
    mask = np.asarray(mask, dtype=bool)
    _check_map_inputs(unenhanced_hu, equilibrium_hu, mask, delta_hu_aorta, hct, spacing_mm, sigma_mm)
    found = _ecv_map_box(unenhanced_hu, equilibrium_hu, mask, delta_hu_aorta, hct, spacing_mm, sigma_mm)
    return BoxedArray(mask.shape, [found] if found is not None else [])


def _check_map_inputs(unenhanced_hu, equilibrium_hu, mask, delta_hu_aorta, hct, spacing_mm, sigma_mm) -> None:
    if not (np.shape(unenhanced_hu) == np.shape(equilibrium_hu) == mask.shape):
        raise ValueError(
            f"shapes differ: unenhanced {np.shape(unenhanced_hu)}, equilibrium {np.shape(equilibrium_hu)}, mask {mask.shape}"
        )
    if len(spacing_mm) != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing_mm)} does not match {mask.ndim} array axes")
    _check_hct(hct)
    if not np.isfinite(delta_hu_aorta) or delta_hu_aorta <= 0:
        raise ValueError(f"aortic enhancement must be > 0 HU, got {delta_hu_aorta} HU")
    if sigma_mm < 0:
        raise ValueError(f"sigma_mm must be >= 0, got {sigma_mm}")


def _ecv_map_box(unenhanced_hu, equilibrium_hu, mask, delta_hu_aorta, hct, spacing_mm, sigma_mm):
    """(box, float32 ECV % over the box, NaN outside the mask) for `ecv_map_percent`, or None
    for an empty mask. Arguments already checked."""
    # Work on the mask's bounding box only (a liver is a fraction of a 512 x 512 x 200 volume),
    # widened by the smoothing kernel's reach.
    sigma_vox = [sigma_mm / float(s) for s in spacing_mm]
    box = bounding_box(mask, [int(np.ceil(4 * sv)) + 1 for sv in sigma_vox])
    if box is None:
        return None
    # float32 throughout: HU need no more, and a liver box of a 512 x 512 x 300 study is large.
    # The phases are only read (views where they are float32 arrays); the difference is the one
    # new box-sized array, worked on in place from here.
    un = np.asarray(unenhanced_hu[box], dtype=np.float32)
    eq = np.asarray(equilibrium_hu[box], dtype=np.float32)
    # Voxels without data (NaN, e.g. outside a registered phase's coverage) stay NaN and are
    # left out of their neighbours' smoothing.
    m = (mask[box] != 0) & np.isfinite(un) & np.isfinite(eq)
    diff = np.subtract(eq, un)
    del un, eq
    if sigma_mm > 0:
        # Normalised convolution of the difference (linear, so the same as smoothing each phase).
        # The two filters are independent and scipy.ndimage releases the GIL: the weights are
        # smoothed in a second thread (same values, about half the time on two cores).
        weight = m.astype(np.float32)  # filtered in place, as the difference is: no third box-sized array
        with ThreadPoolExecutor(1) as pool:
            done = pool.submit(ndimage.gaussian_filter, weight, sigma_vox, output=weight, mode="nearest")
            diff[~m] = 0.0
            ndimage.gaussian_filter(diff, sigma_vox, output=diff, mode="nearest")
            done.result()
        with np.errstate(invalid="ignore", divide="ignore"):
            diff /= weight
        del weight
    diff *= np.float32((1.0 - hct) / float(delta_hu_aorta) * 100.0)
    diff[~m] = np.nan
    return box, diff


def ecv_map_image(
    unenhanced: sitk.Image,
    equilibrium: sitk.Image,
    mask: sitk.Image,
    delta_hu_aorta: float,
    hct: float,
    sigma_mm: float = DEFAULT_MAP_SIGMA_MM,
) -> sitk.Image:
    """`ecv_map_percent` on SimpleITK images on one grid; returns a float32 image on that grid."""
    for name, img in (("equilibrium", equilibrium), ("mask", mask)):
        if not _same_grid(unenhanced, img):
            raise ValueError(f"{name} image is not on the unenhanced image's grid; register and resample first")
    un = sitk.GetArrayViewFromImage(unenhanced)
    eq = sitk.GetArrayViewFromImage(equilibrium)
    m = sitk.GetArrayViewFromImage(mask)  # non-zero inside; read in place, only its box is compared
    spacing = tuple(reversed(unenhanced.GetSpacing()))
    _check_map_inputs(un, eq, m, delta_hu_aorta, hct, spacing, sigma_mm)
    # The map is NaN outside the mask's box: filled and pasted in place, so the full-size image
    # exists once (no full-size numpy array copied into it).
    out = sitk.Image(unenhanced.GetSize(), sitk.sitkFloat32)
    out.CopyInformation(unenhanced)
    out[:, :, :] = float("nan")
    found = _ecv_map_box(un, eq, m, delta_hu_aorta, hct, spacing, sigma_mm)
    if found is not None:
        box, values = found
        part = sitk.GetImageFromArray(values)
        out[box[2].start:box[2].start + values.shape[2], box[1].start:box[1].start + values.shape[1],
            box[0].start:box[0].start + values.shape[0]] = part
    return out


def _same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
    )
