"""3-D volumes (SimpleITK) from DICOM series: single-frame stacks and enhanced multi-frame objects.

Stored values are turned into modality values (HU for CT) with Rescale Slope / Intercept, per
slice in single-frame series and per frame (Pixel Value Transformation functional group) in
enhanced multi-frame objects. Slices are ordered by their position along the slice normal
(Image Position (Patient) . (row x column direction)), never by Instance Number, which scanners
number freely. A series that is not one regular stack (missing slices, uneven spacing, mixed
orientation / matrix / pixel spacing, gantry-tilted shear, several frames at one position) is
refused with a `SeriesError` that names the series and the problem; no guessing or resampling.
Compressed transfer syntaxes decode through pydicom's pixel handlers (pylibjpeg plugins).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array

# Elements above this size (the pixel data) are read from the file only when used.
DEFER_BYTES = 64 * 1024
# Slice gaps may differ by rounding of Image Position (Patient) (often 0.01 mm or coarser).
GAP_REL_TOL = 0.02
GAP_ABS_TOL_MM = 0.01
# Direction cosines written by scanners agree to ~1e-6; 1e-4 tolerates rounding, not real tilt.
ORIENTATION_TOL = 1e-4
# In-plane drift between consecutive slice origins above this fraction of a pixel means the stack
# is sheared (gantry tilt), which an image grid with an orthonormal direction cannot represent.
SHEAR_TOL_PIXELS = 0.1


class SeriesError(ValueError):
    """A series that cannot become one regular 3-D volume. Names the series and the problem;
    carries no patient identifiers."""

    def __init__(self, problem: str, series_uid: str | None = None, series_number: object = None):
        self.problem = problem
        self.series_uid = series_uid
        self.series_number = series_number
        super().__init__(f"series {series_number if series_number is not None else '?'} ({series_uid or 'no UID'}): {problem}")


@dataclass
class Volume:
    """A regular 3-D image in modality units (float32) and what each slice came from.

    `sop_instance_uids[k]` / `frame_numbers[k]` (1-based, None for single-frame) identify the
    source of slice k (SimpleITK z index), so annotations referencing images can be placed."""

    image: sitk.Image
    series_uid: str
    series_number: int | None
    frame_of_reference_uid: str | None
    sop_instance_uids: list[str]
    frame_numbers: list[int | None]
    modality: str | None = None
    rescale_type: str | None = None  # Rescale Type as written (e.g. "HU"); None when absent


@dataclass
class _Frame:
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slope: float
    intercept: float
    rescale_type: str | None
    sop_uid: str
    frame_number: int | None
    source: Dataset
    index: int  # frame index in the source (0 for single-frame)


def read_series(paths: Iterable[str | Path], headers: Sequence[Dataset] | None = None) -> Volume:
    """Read the files of one series and build its volume (see `volume_from_datasets`).

    `headers`: the files' datasets already read with pixel data deferred (pydicom `defer_size`,
    as phase classification reads them), one per path, so they are not parsed again. Pixel data
    stays on disk until its slice is filled in and is not kept, so a series costs its float32
    volume plus one slice, not the whole series' bytes as well."""
    if headers is not None:
        return _build(list(headers))
    datasets = []
    for p in paths:
        try:
            datasets.append(pydicom.dcmread(p, defer_size=DEFER_BYTES))
        except Exception as exc:  # noqa: BLE001 - report which file, whatever pydicom raised
            raise SeriesError(f"cannot read {Path(p).name}: {type(exc).__name__}: {exc}") from exc
    return _build(datasets)


def volume_from_datasets(datasets: Sequence[Dataset]) -> Volume:
    """One volume from the datasets of one series: many single-frame images, or one enhanced
    multi-frame image (Shared / Per-frame Functional Groups)."""
    return _build(datasets)


def _build(datasets: Sequence[Dataset]) -> Volume:
    if not datasets:
        raise SeriesError("no images")
    first = datasets[0]
    uid = str(first.get("SeriesInstanceUID", "")) or None
    number = first.get("SeriesNumber")

    def fail(problem: str) -> SeriesError:
        return SeriesError(problem, uid, number)

    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) > 1:
        raise fail(f"images from {len(uids)} different series")
    fors = {str(ds.get("FrameOfReferenceUID", "")) for ds in datasets}
    if len(fors) > 1:
        raise fail(f"images in {len(fors)} different frames of reference")

    frames: list[_Frame] = []
    for ds in datasets:
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise fail(f"image {ds.get('SOPInstanceUID')} has {ds.SamplesPerPixel} samples per pixel; a volume needs grayscale")
        if "PerFrameFunctionalGroupsSequence" in ds:
            if len(datasets) > 1:
                raise fail("more than one enhanced multi-frame object in the series; build one volume per object")
            frames.extend(_enhanced_frames(ds, fail))
        elif int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise fail(f"image {ds.get('SOPInstanceUID')} is multi-frame without functional groups; no per-frame geometry")
        else:
            frames.append(_single_frame(ds, fail))

    frames, z_spacing = _check_and_sort(frames, fail)
    f0 = frames[0]
    image = sitk.Image([f0.columns, f0.rows, len(frames)], sitk.sitkFloat32)
    out = _writable_view(image)
    decoded: tuple[int, np.ndarray] | None = None  # the last decoded source (one multi-frame object, or one slice)
    for k, fr in enumerate(frames):
        if decoded is None or decoded[0] != id(fr.source):
            try:
                decoded = (id(fr.source), stored_values(fr.source))
            except Exception as exc:  # noqa: BLE001 - decoder errors come in many types
                syntax = getattr(getattr(fr.source, "file_meta", None), "TransferSyntaxUID", "?")
                raise fail(f"cannot decode pixel data of {fr.sop_uid} (transfer syntax {syntax}): {exc}") from exc
        arr = decoded[1]
        plane = arr[fr.index] if arr.ndim == 3 else arr
        if plane.shape != (f0.rows, f0.columns):
            raise fail(f"image {fr.sop_uid}: pixel data is {plane.shape}, header says {f0.rows}x{f0.columns}")
        # Modality value = stored value x slope + intercept, computed in float32 straight into the image.
        if fr.slope == 1.0:
            np.add(plane, np.float32(fr.intercept), out=out[k], dtype=np.float32)
        else:
            np.multiply(plane, np.float32(fr.slope), out=out[k], dtype=np.float32)
            out[k] += np.float32(fr.intercept)
    del decoded, out

    row, col = f0.orientation[:3], f0.orientation[3:]
    normal = np.cross(row, col)
    image.SetOrigin(tuple(float(v) for v in f0.position))
    image.SetSpacing((f0.pixel_spacing[1], f0.pixel_spacing[0], z_spacing))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    return Volume(
        image=image,
        series_uid=uid or "",
        series_number=int(number) if number not in (None, "") else None,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")) or None,
        sop_instance_uids=[fr.sop_uid for fr in frames],
        frame_numbers=[fr.frame_number for fr in frames],
        modality=str(first.get("Modality", "")) or None,
        rescale_type=f0.rescale_type,
    )


NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
PIXEL_DATA = 0x7FE00010


def _writable_view(image: sitk.Image) -> np.ndarray:
    """A writable numpy view [z, y, x] of a new float32 SimpleITK image's buffer.

    SimpleITK only hands out read-only views; filling the image through one in place avoids a
    second full-size array and its copy (page faults on this size cost ~0.2 s per volume). Valid
    while `image` lives and is not resized; used only on images this module has just created."""
    view = sitk.GetArrayViewFromImage(image)  # also makes the buffer unique to `image`
    buffer = (ctypes.c_float * view.size).from_address(view.__array_interface__["data"][0])
    return np.frombuffer(buffer, dtype=np.float32).reshape(view.shape)


def stored_values(ds: Dataset) -> np.ndarray:
    """Stored pixel values ([frames,] rows, columns) of a dataset, leaving it as it was.

    Pixel data that pydicom deferred (`defer_size`) is read from the file and not stored in the
    dataset, which later steps keep as a header: uncompressed little-endian data whose stored
    bits fill the allocated bits straight from its offset, anything else (compressed, packed,
    12 of 16 bits) decoded from the file by pydicom. Pixel data in memory is viewed in place when
    uncompressed, else decoded by pydicom's pixel handlers."""
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True) if PIXEL_DATA in ds else None
    deferred = raw is not None and raw.value is None and getattr(raw, "value_tell", None) is not None and bool(ds.filename)
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    bits = int(ds.get("BitsAllocated", 0) or 0)
    if (raw is not None and syntax in NATIVE_LITTLE_ENDIAN and bits in (8, 16, 32)
            and int(ds.get("BitsStored", 0) or 0) == bits and int(ds.get("SamplesPerPixel", 1) or 1) == 1):
        dtype = np.dtype(f"<{'i' if int(ds.get('PixelRepresentation', 0) or 0) else 'u'}{bits // 8}")
        rows, cols, n = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
        nbytes = rows * cols * n * dtype.itemsize
        shape = (n, rows, cols) if n > 1 else (rows, cols)
        if deferred:
            with open(ds.filename, "rb") as fh:
                fh.seek(raw.value_tell)
                data = fh.read(nbytes)
        else:
            data = ds.PixelData
        if len(data) >= nbytes:
            return np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize).reshape(shape)
    if deferred:
        return pixel_array(ds.filename)
    return ds.pixel_array


def _floats(value, n: int, what: str, where: str, fail) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise fail(f"{where}: {what} is missing or not numeric") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise fail(f"{where}: {what} must have {n} numeric values, got {value!r}")
    return arr


def _int(ds: Dataset, keyword: str, where: str, fail) -> int:
    value = ds.get(keyword)
    if value in (None, "") or int(value) <= 0:
        raise fail(f"{where}: {keyword} is missing or not positive")
    return int(value)


def _single_frame(ds: Dataset, fail) -> _Frame:
    sop = str(ds.get("SOPInstanceUID", ""))
    where = f"image {sop}"
    orientation = _orientation(ds.get("ImageOrientationPatient"), where, fail)
    return _Frame(
        position=_floats(ds.get("ImagePositionPatient"), 3, "Image Position (Patient)", where, fail),
        orientation=orientation,
        pixel_spacing=tuple(_floats(ds.get("PixelSpacing"), 2, "Pixel Spacing", where, fail)),
        rows=_int(ds, "Rows", where, fail),
        columns=_int(ds, "Columns", where, fail),
        slope=float(ds.get("RescaleSlope", 1.0) or 1.0),
        intercept=float(ds.get("RescaleIntercept", 0.0) or 0.0),
        rescale_type=str(ds.get("RescaleType", "")) or None,
        sop_uid=sop,
        frame_number=None,
        source=ds,
        index=0,
    )


def functional_group(ds: Dataset, per_frame: Dataset, keyword: str) -> Sequence | None:
    """The functional group sequence `keyword` for a frame (its item of the Per-frame Functional
    Groups Sequence): per-frame wins over shared (PS3.3 C.7.6.16); None when neither has an item."""
    if keyword in per_frame and len(per_frame[keyword].value):
        return per_frame[keyword].value
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0] and len(shared[0][keyword].value):
        return shared[0][keyword].value
    return None


def _group(ds: Dataset, per_frame: Dataset, keyword: str) -> Dataset | None:
    """The first item of a frame's functional group `keyword` (see `functional_group`)."""
    seq = functional_group(ds, per_frame, keyword)
    return seq[0] if seq else None


def _enhanced_frames(ds: Dataset, fail) -> list[_Frame]:
    sop = str(ds.get("SOPInstanceUID", ""))
    frames = []
    n = int(ds.get("NumberOfFrames", 1))
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != n:
        raise fail(f"image {sop}: {len(per_frame)} per-frame functional group items for {n} frames")
    for i, item in enumerate(per_frame):
        where = f"image {sop} frame {i + 1}"
        pos = _group(ds, item, "PlanePositionSequence")
        ori = _group(ds, item, "PlaneOrientationSequence")
        meas = _group(ds, item, "PixelMeasuresSequence")
        if pos is None or ori is None or meas is None:
            raise fail(f"{where}: no plane position, plane orientation or pixel measures functional group")
        pvt = _group(ds, item, "PixelValueTransformationSequence")
        frames.append(_Frame(
            position=_floats(pos.get("ImagePositionPatient"), 3, "Image Position (Patient)", where, fail),
            orientation=_orientation(ori.get("ImageOrientationPatient"), where, fail),
            pixel_spacing=tuple(_floats(meas.get("PixelSpacing"), 2, "Pixel Spacing", where, fail)),
            rows=_int(ds, "Rows", where, fail),
            columns=_int(ds, "Columns", where, fail),
            slope=float(pvt.get("RescaleSlope", 1.0)) if pvt is not None else 1.0,
            intercept=float(pvt.get("RescaleIntercept", 0.0)) if pvt is not None else 0.0,
            rescale_type=(str(pvt.get("RescaleType", "")) or None) if pvt is not None else None,
            sop_uid=sop,
            frame_number=i + 1,
            source=ds,
            index=i,
        ))
    return frames


def _orientation(value, where: str, fail) -> np.ndarray:
    o = _floats(value, 6, "Image Orientation (Patient)", where, fail)
    row, col = o[:3], o[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise fail(f"{where}: Image Orientation (Patient) {o.tolist()} is not two orthogonal unit vectors")
    return o


def _check_and_sort(frames: list[_Frame], fail) -> tuple[list[_Frame], float]:
    f0 = frames[0]
    for fr in frames[1:]:
        if not np.allclose(fr.orientation, f0.orientation, atol=ORIENTATION_TOL):
            raise fail(f"mixed orientations: {f0.orientation.round(4).tolist()} and {fr.orientation.round(4).tolist()}")
        if (fr.rows, fr.columns) != (f0.rows, f0.columns):
            raise fail(f"mixed matrix sizes: {f0.rows}x{f0.columns} and {fr.rows}x{fr.columns}")
        if fr.rescale_type != f0.rescale_type:
            raise fail(f"mixed Rescale Type: {f0.rescale_type!r} and {fr.rescale_type!r}")
        if not np.allclose(fr.pixel_spacing, f0.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise fail(f"mixed pixel spacing: {list(f0.pixel_spacing)} and {list(fr.pixel_spacing)} mm")
    normal = np.cross(f0.orientation[:3], f0.orientation[3:])
    frames = sorted(frames, key=lambda fr: float(fr.position @ normal))
    if len(frames) == 1:
        ds = f0.source
        z = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
        return frames, z
    d = np.array([fr.position @ normal for fr in frames])
    gaps = np.diff(d)
    step = float(np.median(gaps))
    if np.any(gaps < GAP_ABS_TOL_MM) or step <= GAP_ABS_TOL_MM:
        raise fail(f"{int(np.sum(gaps < GAP_ABS_TOL_MM))} duplicate slice position(s) (several temporal positions, "
                   "echoes or duplicate images); one volume needs one frame per position")
    tol = max(GAP_ABS_TOL_MM, GAP_REL_TOL * step)
    bad = np.flatnonzero(np.abs(gaps - step) > tol)
    if bad.size:
        multiples = np.round(gaps[bad] / step)
        if np.all(multiples >= 2) and np.all(np.abs(gaps[bad] - multiples * step) <= tol):
            i = int(bad[0])
            raise fail(f"missing slices: gap of {gaps[i]:.3f} mm after slice position {d[i]:.3f} mm where the spacing is "
                       f"{step:.3f} mm ({int(np.sum(multiples - 1))} slice(s) missing in total)")
        raise fail(f"inconsistent slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (median {step:.3f} mm)")
    # Origins must move along the normal only; in-plane drift is a sheared (gantry-tilted) stack.
    offsets = np.array([fr.position - f0.position for fr in frames])
    lateral = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(lateral, axis=1)))
    if drift > SHEAR_TOL_PIXELS * min(f0.pixel_spacing):
        raise fail(f"slices are not stacked along the slice normal (in-plane drift {drift:.2f} mm; gantry tilt?); "
                   "a sheared stack is not supported")
    return frames, float((d[-1] - d[0]) / (len(d) - 1))
