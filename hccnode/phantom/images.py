"""Generic image-series writer: evaluates the anatomy slice by slice and writes one file per image.

A `SeriesPlan` says what a series is (kind, labels, how to turn tissue labels into real-world
values, how those are stored); `write_series` streams it to disk so memory stays bounded by one
slice whatever the study size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

import numpy as np
from pydicom.dataset import Dataset

from hccnode.phantom import dicomio
from hccnode.phantom.anatomy import Motion, Tumor, label_slice

TABLE_Z_MM = -250.0  # patient z of the body origin: scanners rarely put the liver at z = 0


@dataclass
class Grid:
    """Image geometry shared by all series of a study (axial, LPS, first row anterior)."""

    matrix: int
    pixel_mm: float
    slices: int
    spacing_mm: float
    thickness_mm: float

    def __post_init__(self) -> None:
        c = (np.arange(self.matrix) - (self.matrix - 1) / 2.0) * self.pixel_mm
        self.x, self.y = np.meshgrid(c, c)  # x along columns, y along rows

    @property
    def origin_xy(self) -> tuple[float, float]:
        return float(self.x[0, 0]), float(self.y[0, 0])

    def body_z(self, k: int) -> float:
        """Body z (mm) of slice k; slice 0 is the most superior, slice slices//2 passes through z = 0."""
        return (self.slices // 2 - k) * self.spacing_mm

    def patient_z(self, k: int) -> float:
        return self.body_z(k) + TABLE_Z_MM


@dataclass
class Image:
    """One image of a series: its slice index and per-image parameters (e.g. b-value)."""

    slice_index: int
    params: dict = field(default_factory=dict)


@dataclass
class SeriesPlan:
    key: str                      # stable name, also feeds UIDs and noise seeds
    kind: str                     # truth kind: ct_arterial, dect_iodine, mr_adc ...
    number: int
    description: str
    header: Callable[[Dataset], None]          # sets modality-specific attributes on the template
    values: Callable[[np.ndarray, Image], np.ndarray]  # labels -> real-world float values (with noise)
    images: list[Image]
    acquired: datetime            # acquisition start of the series
    content_delay_s: float = 0.0  # derived series are created later than acquired
    slope: float = 1.0
    intercept: float = 0.0
    signed: bool = False
    phase: str | None = None
    motion: Motion | None = None
    tumors: list[Tumor] = field(default_factory=list)
    extra: dict = field(default_factory=dict)    # truth extras (keV, b-values ...)
    instance_header: Callable[[Dataset, Image], None] | None = None
    folder: str = ""
    sop_uids: list[str] = field(default_factory=list)


def stored(values: np.ndarray, slope: float, intercept: float, signed: bool) -> np.ndarray:
    """Real-world values -> stored integers (rounded, clipped to the 16-bit range)."""
    lo, hi = (-32768, 32767) if signed else (0, 65535)
    raw = np.clip(np.rint((values - intercept) / slope), lo, hi)
    return raw.astype(np.int16 if signed else np.uint16)


def series_template(plan: SeriesPlan, study: dict, grid: Grid, seed: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    study["header"](ds)
    ds.SeriesInstanceUID = dicomio.uid(seed, study["label"], plan.key, "series")
    ds.SeriesNumber = plan.number
    ds.SeriesDescription = plan.description
    ds.SeriesDate = dicomio.dicom_date(plan.acquired)
    ds.SeriesTime = dicomio.dicom_time(plan.acquired)
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = dicomio.uid(seed, study["label"], "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [grid.pixel_mm, grid.pixel_mm]
    ds.SliceThickness = grid.thickness_mm
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = grid.matrix
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if plan.signed else 0
    plan.header(ds)
    return ds


def image_dataset(template: Dataset, plan: SeriesPlan, grid: Grid, seed: int, study: dict, n: int,
                  image: Image, pixels: np.ndarray) -> Dataset:
    ds = copy.deepcopy(template)
    ds.SOPInstanceUID = dicomio.uid(seed, study["label"], plan.key, "image", n)
    ds.InstanceNumber = n
    k = image.slice_index
    acq = plan.acquired + timedelta(seconds=4.0 * k / max(grid.slices, 1))  # 4 s helical sweep
    ds.AcquisitionDate = dicomio.dicom_date(acq)
    ds.AcquisitionTime = dicomio.dicom_time(acq)
    content = acq + timedelta(seconds=plan.content_delay_s)
    ds.ContentDate = dicomio.dicom_date(content)
    ds.ContentTime = dicomio.dicom_time(content)
    x0, y0 = grid.origin_xy
    z = grid.patient_z(k)
    ds.ImagePositionPatient = [round(x0, 4), round(y0, 4), round(z, 4)]
    ds.SliceLocation = round(z, 4)
    if plan.instance_header:
        plan.instance_header(ds, image)
    ds.PixelData = pixels.tobytes()
    return ds


def write_series(plan: SeriesPlan, study: dict, grid: Grid, seed: int, vessels: bool, out_dir: Path,
                 compression: str, faults: tuple[str, ...] = (), progress=None) -> None:
    """Stream `plan` to `out_dir/<folder>/`, one file per image; fills plan.sop_uids."""
    template = series_template(plan, study, grid, seed)
    folder = out_dir / plan.folder
    plan.sop_uids = []
    cache: tuple[int, np.ndarray] | None = None
    for n, image in enumerate(plan.images, start=1):
        if cache is None or cache[0] != image.slice_index:
            z = grid.body_z(image.slice_index)
            cache = (image.slice_index, label_slice(grid.x, grid.y, z, plan.tumors, vessels, plan.motion))
        values = plan.values(cache[1], image)
        pixels = stored(values, plan.slope, plan.intercept, plan.signed)
        ds = image_dataset(template, plan, grid, seed, study, n, image, pixels)
        apply_faults(ds, faults)
        dicomio.save(ds, folder / f"IM{n:05d}.dcm", compression)
        plan.sop_uids.append(ds.SOPInstanceUID)
        if progress is not None:
            progress.update(1)


def apply_faults(ds: Dataset, faults: tuple[str, ...]) -> None:
    """Header damage a real node meets (see spec.HEADER_FAULTS); shuffled_times is done by the planner."""
    if "no_description" in faults:
        for kw in ("SeriesDescription", "ProtocolName"):
            if kw in ds:
                del ds[kw]
    if "no_contrast" in faults:
        for kw in ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusStartTime",
                   "ContrastBolusTotalDose", "ContrastFlowRate", "ContrastFlowDuration",
                   "ContrastBolusIngredient", "ContrastBolusIngredientConcentration", "ContrastBolusAgentSequence"):
            if kw in ds:
                del ds[kw]
    if "no_times" in faults:
        for kw in ("SeriesTime", "AcquisitionTime", "ContrastBolusStartTime", "AcquisitionDateTime"):
            if kw in ds:
                del ds[kw]
        ds.ContentTime = ""  # Type 2C in the image modules: keep present, empty
