"""Shared helpers for the phantom tests: read series back and place ROIs from geometry alone."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom

DCIODVFY = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
# dicom3tools 2022 predates the Rescale Type term MGML (PS3.3 C.11.1.1.2) and cannot know
# vendor-specific ImageType value 4 terms (nor, in Enhanced CT, the multi-energy ones); everything
# else must be clean.
ALLOWED_WARNINGS = ("Unrecognized defined term <MGML>", "for value 4 of attribute <Image Type>",
                    "for value 4 of attribute <Frame Type>")


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, unexpected warnings) reported by dciodvfy for one file."""
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    warnings = [ln for ln in lines if ln.startswith("Warning") and not any(a in ln for a in ALLOWED_WARNINGS)]
    return errors, warnings


def read_series(folder: Path) -> list[pydicom.Dataset]:
    """Instances of a single-frame series sorted by InstanceNumber."""
    return sorted((pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: int(d.InstanceNumber))


def real_values(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))


def slice_at(datasets: list[pydicom.Dataset], z_mm: float) -> pydicom.Dataset:
    return min(datasets, key=lambda d: abs(float(d.ImagePositionPatient[2]) - z_mm))


def disk_mean(ds: pydicom.Dataset, center_xy_mm: tuple[float, float], radius_mm: float,
              values: np.ndarray | None = None) -> float:
    """Mean real-world value in a disk ROI placed from the header geometry (axial images only)."""
    v = real_values(ds) if values is None else values
    x0, y0 = float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1])
    row_mm, col_mm = (float(s) for s in ds.PixelSpacing)
    rows, cols = np.mgrid[0:ds.Rows, 0:ds.Columns]
    x = x0 + cols * col_mm
    y = y0 + rows * row_mm
    mask = (x - center_xy_mm[0]) ** 2 + (y - center_xy_mm[1]) ** 2 <= radius_mm**2
    assert mask.sum() >= 5, "ROI too small for this matrix"
    return float(v[mask].mean())


def series_folder(root: Path, truth: dict, kind: str, study: int = 0, **match) -> Path:
    for s in truth["studies"][study]["series"]:
        if s["kind"] == kind and all(s.get(k) == v for k, v in match.items()):
            return root / s["folder"]
    raise KeyError(kind)
