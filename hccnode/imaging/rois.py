"""Reader annotations as masks on a reference volume's grid.

A reader's annotation wins over automatic ROIs (DESIGN.md). Read here: DICOM Segmentation
(a binary SEG drawn on the reference's own images straight from its bits, any other through
highdicom), RT Structure Set (closed planar contours rasterised onto the grid), and TID 1500
measurement reports with planar (SCOORD on a referenced image) or volumetric (SCOORD3D) image
regions. Each region's role (tumor / liver / aorta / muscle) comes from its code, else its name,
through hccnode/data/roi_synonyms.toml. Regions that cannot be placed or recognised are listed in
`ignored` with the reason; nothing is dropped silently.

ROIs stay separate (three liver ROIs are three masks) because the papers average ROI means.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from matplotlib.path import Path as Polygon
from pydicom.dataset import Dataset
from pydicom.sr._snomed_dict import mapping as _snomed_mapping

from hccnode.imaging.measure import READER, RoiRef
from hccnode.imaging.volumes import NATIVE_LITTLE_ENDIAN, Volume, functional_group

ROLES = ("tumor", "liver", "aorta", "muscle")
# DICOM's SNOMED-RT -> SNOMED CT code mapping, as shipped with pydicom (PS3.16 Annex O).
_SRT_TO_SCT: dict[str, str] = dict(_snomed_mapping.get("SRT", {}))
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# A planar contour further than this fraction of the slice spacing from a slice centre does not
# belong to the grid (another reconstruction) and is not placed.
OFF_SLICE_TOL = 0.25


class AnnotationError(ValueError):
    """An annotation object that cannot be used at all (names its SOP Instance UID and why)."""

    def __init__(self, sop_uid: str, problem: str):
        self.sop_uid = sop_uid
        self.problem = problem
        super().__init__(f"annotation {sop_uid}: {problem}")


@dataclass
class RoiMask:
    """A region on the reference grid (uint8 image, 1 inside) with its provenance."""

    mask: sitk.Image
    ref: RoiRef

    @property
    def role(self) -> str:
        return self.ref.name


@dataclass
class AnnotationRois:
    rois: list[RoiMask] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # "label: reason"

    def by_role(self, role: str) -> list[RoiMask]:
        return [r for r in self.rois if r.role == role]


# ---------------------------------------------------------------- labels to roles

@dataclass(frozen=True)
class Synonyms:
    codes: dict[str, str]
    names: dict[str, str]

    def role(self, label: str | None, codes: list[tuple[str, str]] = ()) -> str | None:
        """Role for coded concepts (scheme, value), tried in order, else for a label name."""
        for scheme, value in codes:
            if scheme == "SRT":  # legacy SNOMED-RT designator (older SEGs): look up its SNOMED CT twin
                scheme, value = "SCT", _SRT_TO_SCT.get(value, value)
            role = self.codes.get(f"{scheme}:{value}")
            if role:
                return role
        if label:
            return self.names.get(normalise_label(label))
        return None


def normalise_label(label: str) -> str:
    s = re.sub(r"[_\-.]+", " ", label.strip().lower())
    s = re.sub(r"\s*\d+$", "", s)
    return re.sub(r"\s+", " ", s).strip()


def load_synonyms(path: str | Path | None = None) -> Synonyms:
    """Read the synonyms file (default: the package's hccnode/data/roi_synonyms.toml)."""
    if path is None:
        text = resources.files("hccnode").joinpath("data", "roi_synonyms.toml").read_text(encoding="utf-8")
        where = "hccnode/data/roi_synonyms.toml"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    codes: dict[str, str] = {}
    for key, role in data.get("codes", {}).items():
        if role not in ROLES:
            raise ValueError(f"{where}: [codes] {key!r} maps to unknown role {role!r}; roles are {ROLES}")
        codes[key] = role
    names: dict[str, str] = {}
    for role, labels in data.get("names", {}).items():
        if role not in ROLES:
            raise ValueError(f"{where}: [names] has unknown role {role!r}; roles are {ROLES}")
        for label in labels:
            key = normalise_label(label)
            if names.get(key, role) != role:
                raise ValueError(f"{where}: label {label!r} is listed for both {names[key]!r} and {role!r}")
            names[key] = role
    return Synonyms(codes, names)


def _codes(seq) -> list[tuple[str, str]]:
    return [(str(item.CodingSchemeDesignator), str(item.CodeValue)) for item in (seq or []) if "CodeValue" in item]


# ---------------------------------------------------------------- entry point

def read_annotation(ds: Dataset, reference: Volume, synonyms: Synonyms | None = None) -> AnnotationRois:
    """Masks on `reference`'s grid from one SEG, RTSTRUCT or TID 1500 SR object."""
    synonyms = synonyms or load_synonyms()
    sop_class = str(ds.get("SOPClassUID", ""))
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    if sop_class == SEG_SOP_CLASS:
        return _from_seg(ds, reference, synonyms)
    if sop_class == RTSTRUCT_SOP_CLASS:
        return _from_rtstruct(ds, reference, synonyms)
    if str(ds.get("Modality", "")) == "SR":
        return _from_sr(ds, reference, synonyms)
    raise AnnotationError(sop_uid, f"SOP class {sop_class} is not a SEG, RTSTRUCT or SR")


def referenced_series(ds: Dataset) -> set[str]:
    """Series Instance UIDs the annotation was drawn on (SEG: Referenced Series; RTSTRUCT:
    Referenced Frame of Reference > Study > Series; SR: Current Requested Procedure Evidence), so
    the caller can load that series as the reference volume. Empty if the object does not say."""
    found: set[str] = set()
    for item in ds.get("ReferencedSeriesSequence", []):
        found.add(str(item.SeriesInstanceUID))
    for fref in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in fref.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                found.add(str(series.SeriesInstanceUID))
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            found.add(str(series.SeriesInstanceUID))
    return found


def _check_frame_of_reference(sop_uid: str, for_uid: str | None, reference: Volume) -> None:
    if for_uid and reference.frame_of_reference_uid and for_uid != reference.frame_of_reference_uid:
        raise AnnotationError(
            sop_uid, f"frame of reference {for_uid} differs from the reference series' {reference.frame_of_reference_uid}"
        )


def _ref(role: str, sop_uid: str, label: str) -> RoiRef:
    return RoiRef(name=role, source=READER, annotation_uid=sop_uid, label=label)


def _blank(reference: Volume) -> np.ndarray:
    return np.zeros(reference.image.GetSize()[::-1], dtype=np.uint8)


def _to_image(arr: np.ndarray, reference: Volume) -> sitk.Image:
    img = sitk.GetImageFromArray(arr.astype(np.uint8, copy=False))  # GetImageFromArray copies anyway
    img.CopyInformation(reference.image)
    return img


# ---------------------------------------------------------------- SEG

def _from_seg(ds: Dataset, reference: Volume, synonyms: Synonyms) -> AnnotationRois:
    sop_uid = str(ds.SOPInstanceUID)
    _check_frame_of_reference(sop_uid, ds.get("FrameOfReferenceUID"), reference)
    # Fast path first (a binary SEG drawn on the reference's own images); highdicom for the rest.
    fast = _binary_seg_on_reference_slices(ds, reference)
    seg = None if fast is not None else _highdicom_seg(ds, sop_uid)
    out = AnnotationRois()
    for item in ds.SegmentSequence:
        number = int(item.SegmentNumber)
        label = str(item.get("SegmentLabel", f"segment {number}"))
        role = synonyms.role(label, _codes(item.get("SegmentedPropertyTypeCodeSequence")))
        if role is None:
            out.ignored.append(f"{label}: label and code not in the ROI synonyms")
            continue
        if fast is not None:
            on_grid = _to_image(fast.mask(number, reference), reference)
        else:
            on_grid = _segment_mask(seg, number, reference)
        if isinstance(on_grid, str):
            out.ignored.append(f"{label}: {on_grid}")
            continue
        if not sitk.GetArrayViewFromImage(on_grid).any():
            out.ignored.append(f"{label}: segment lies outside the reference volume")
            continue
        if seg is not None:  # the fast path reads only SEGs drawn wholly on the reference's slices
            off, drawn = _frames_off_reference(ds, seg, number, reference)
            if off:
                out.ignored.append(f"{label}: {off} of the {drawn} frames it was drawn on lie outside the reference "
                                   "volume; only the part inside is used")
        out.rois.append(RoiMask(on_grid, _ref(role, sop_uid, label)))
    return out


def _frames_off_reference(ds: Dataset, seg: hd.seg.Segmentation, number: int, reference: Volume) -> tuple[int, int]:
    """(frames of segment `number` holding part of it whose plane lies beyond the reference's first
    or last slice by more than half a slice, all frames holding part of it): what placing it on
    the reference grid leaves out. Frames without a Plane Position count as inside."""
    img = reference.image
    normal = np.asarray(img.GetDirection()).reshape(3, 3)[:, 2]
    first = float(np.dot(normal, img.GetOrigin()))
    last = float(np.dot(normal, img.TransformIndexToPhysicalPoint((0, 0, img.GetSize()[2] - 1))))
    half = img.GetSpacing()[2] / 2.0
    lo, hi = min(first, last) - half, max(first, last) + half
    off = drawn = 0
    for i, item in enumerate(ds.get("PerFrameFunctionalGroupsSequence") or []):
        segment = functional_group(ds, item, "SegmentIdentificationSequence")
        if not segment or int(segment[0].ReferencedSegmentNumber) != number:
            continue
        if not np.asarray(seg.get_stored_frame(i + 1)).any():
            continue
        drawn += 1
        position = functional_group(ds, item, "PlanePositionSequence")
        if position and "ImagePositionPatient" in position[0]:
            d = float(np.dot(normal, [float(v) for v in position[0].ImagePositionPatient]))
            off += not lo <= d <= hi
    return off, drawn


def _highdicom_seg(ds: Dataset, sop_uid: str) -> hd.seg.Segmentation:
    try:
        return hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:  # noqa: BLE001 - highdicom raises several types for bad objects
        raise AnnotationError(sop_uid, f"not a readable Segmentation: {exc}") from exc


def _segment_mask(seg: hd.seg.Segmentation, number: int, reference: Volume) -> sitk.Image | str:
    """One segment on the reference grid through highdicom: frame by frame on the reference's
    images, else its volume pasted or resampled; a reason when it cannot be placed."""
    on_grid = _seg_on_reference_slices(seg, number, reference)
    if on_grid is not None:
        return on_grid
    try:
        vol = seg.get_volume(segment_numbers=[number])  # one channel: this segment
    except Exception as exc:  # noqa: BLE001
        return f"segment frames do not form a volume ({exc})"
    if vol is None:
        return "empty segment"
    return _seg_mask_on(vol.squeeze_channel() if vol.number_of_channel_dimensions else vol, reference.image)


def binary_frames(packed: bytes, rows: int, columns: int, frames: int, first: int = 0, count: int | None = None
                  ) -> np.ndarray:
    """Pixel Data of Bits Allocated 1 (a BINARY Segmentation) as bool [frames, rows, columns]
    (`count` frames from frame `first`, default all).

    PS3.5 8.1.1: one bit per pixel, eight pixels per byte with the first pixel in the least
    significant bit; the frames of a multi-frame image follow one another bit by bit, with no
    padding between frames (a 5 x 3 frame ends in the middle of a byte), and only the end of the
    Pixel Data is padded to an even length. Raises ValueError when `packed` is shorter than the
    frames need or longer by more than that one pad byte."""
    bits = rows * columns * frames
    need = -(-bits // 8)
    if not need <= len(packed) <= need + 1:
        raise ValueError(f"pixel data is {len(packed)} bytes; {frames} frames of {rows} x {columns} bits need {need}")
    count = frames - first if count is None else count
    start, stop = first * rows * columns, (first + count) * rows * columns  # bit offsets
    data = np.frombuffer(packed, dtype=np.uint8, count=need)[start // 8:-(-stop // 8)]
    flat = np.unpackbits(data, count=stop - start + start % 8, bitorder="little")[start % 8:]
    return flat.view(bool).reshape(count, rows, columns)


@dataclass
class _BinarySegFrames:
    """A BINARY SEG's packed frames and, per segment, which frame goes on which reference slice.
    Frames are unpacked one at a time into the mask (a 500-frame SEG unpacked at once is a
    140 MB array)."""

    packed: bytes
    rows: int
    columns: int
    frames: int
    placed: dict[int, tuple[list[int], list[int]]]  # segment number -> (frame indices, slice indices)

    def mask(self, number: int, reference: Volume) -> np.ndarray:
        """The segment as a uint8 array on the reference grid (zeros where it has no frame)."""
        arr = _blank(reference)
        frames, slices = self.placed.get(number, ([], []))
        for i, k in zip(frames, slices):
            arr[k] = binary_frames(self.packed, self.rows, self.columns, self.frames, i, 1)[0]
        return arr


def _binary_seg_on_reference_slices(ds: Dataset, reference: Volume) -> _BinarySegFrames | None:
    """A BINARY, uncompressed SEG whose every frame was drawn on one image (slice) of the
    reference, read straight from its headers and bits: no highdicom lookup tables, no per-segment
    query. None for anything else (other images, compressed, fractional, tiled, anything odd): the
    highdicom path decides, and it validates the object.

    Checked here because the masks rely on it: BINARY with Bits Allocated 1 and one sample, Rows
    and Columns of the reference, one segment and one source image per frame (Segment
    Identification and Derivation Image functional groups, per-frame or shared), spatial
    locations preserved (as highdicom requires for reading by source image),
    segment numbers of the Segment Sequence, at most one frame per segment and slice, and Pixel
    Data of the size the frames need."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if (str(ds.get("SegmentationType", "")) != "BINARY" or syntax not in NATIVE_LITTLE_ENDIAN
            or int(ds.get("BitsAllocated", 0) or 0) != 1 or int(ds.get("SamplesPerPixel", 1) or 1) != 1
            or (columns, rows) != tuple(reference.image.GetSize()[:2]) or "PixelData" not in ds
            or str(ds.get("DimensionOrganizationType", "")) == "TILED_FULL"):
        return None
    multi_frame = any(f is not None for f in reference.frame_numbers)
    slice_of = {(uid, frame if multi_frame else None): k
                for k, (uid, frame) in enumerate(zip(reference.sop_instance_uids, reference.frame_numbers))}
    if not slice_of or len(slice_of) != len(reference.sop_instance_uids):
        return None
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    placed: dict[int, tuple[list[int], list[int]]] = {}
    seen: set[tuple[int, int]] = set()
    try:
        numbers = {int(item.SegmentNumber) for item in ds.SegmentSequence}
        if len(numbers) != len(ds.SegmentSequence) or not per_frame or len(per_frame) != int(ds.NumberOfFrames):
            return None
        for i, item in enumerate(per_frame):
            # Exactly one item each (else ValueError). A single-segment SEG may share its segment.
            (segment,) = functional_group(ds, item, "SegmentIdentificationSequence") or ()
            (derivation,) = functional_group(ds, item, "DerivationImageSequence") or ()
            (source,) = derivation.SourceImageSequence
            if source.get("SpatialLocationsPreserved") != "YES":
                return None
            number = int(segment.ReferencedSegmentNumber)
            frame = int(source.ReferencedFrameNumber) if multi_frame else None
            k = slice_of.get((str(source.ReferencedSOPInstanceUID), frame))
            if k is None or number not in numbers or (number, k) in seen:
                return None
            seen.add((number, k))
            frames, slices = placed.setdefault(number, ([], []))
            frames.append(i)
            slices.append(k)
        packed = ds.PixelData
        binary_frames(packed, rows, columns, len(per_frame), 0, 0)  # checks the length
    except (AttributeError, TypeError, ValueError):
        return None
    return _BinarySegFrames(packed, rows, columns, len(per_frame), placed)


def _seg_on_reference_slices(seg: hd.seg.Segmentation, number: int, reference: Volume) -> sitk.Image | None:
    """The segment read frame by frame against the reference's own images, when the SEG was drawn
    on exactly them (the usual case; no resampling of a whole volume). None: use the general path."""
    try:
        if any(f is not None for f in reference.frame_numbers):
            arr = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=reference.sop_instance_uids[0], source_frame_numbers=list(reference.frame_numbers),
                segment_numbers=[number], assert_missing_frames_are_empty=True)
        else:
            arr = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=list(reference.sop_instance_uids), segment_numbers=[number],
                assert_missing_frames_are_empty=True)
    except Exception:  # noqa: BLE001 - drawn on other images: the general (resampling) path decides
        return None
    arr = np.asarray(arr)[..., 0]
    if arr.shape != tuple(reference.image.GetSize()[::-1]):
        return None
    return _to_image(arr >= 0.5 if arr.dtype.kind == "f" else arr > 0, reference)


SLAB_SLICES = 32  # segment slices pasted at a time onto the reference grid


def _seg_mask_on(vol: hd.Volume, reference: sitk.Image) -> sitk.Image:
    """A segment volume as a uint8 mask on the reference grid. Binary segments hold 1; fractional
    ones (rescaled to 0..1) count where >= 0.5.

    The volume's array is taken in its own axis order (no transposed copy): SimpleITK axis x is
    its last axis, so spacing and direction columns are reversed. A segment drawn on the reference
    series lies on its grid (often on fewer slices) and is pasted in place; anything else is
    resampled (nearest neighbour)."""
    arr = np.asarray(vol.array)
    # Fractional segments are rescaled to 0..1 floats; binary ones hold 0 / 1 and are used as is.
    binary = (arr >= 0.5).view(np.uint8) if arr.dtype.kind == "f" else arr.astype(np.uint8, copy=False)
    spacing = [float(v) for v in vol.spacing[::-1]]
    axes = np.asarray(vol.direction, dtype=float)[:, ::-1].copy()  # columns: SimpleITK x, y, z
    origin = np.asarray(vol.position, dtype=float)
    # An axis running against the reference's (e.g. slices stored head first) is flipped: a view.
    ref_axes = np.asarray(reference.GetDirection()).reshape(3, 3)
    for a in range(3):
        if np.allclose(axes[:, a], -ref_axes[:, a], atol=1e-4):
            origin = origin + axes[:, a] * spacing[a] * (binary.shape[2 - a] - 1)
            axes[:, a] *= -1
            binary = np.flip(binary, axis=2 - a)
    direction = [float(v) for v in axes.ravel()]
    origin = [float(v) for v in origin]
    offset = _grid_offset(binary.shape[::-1], spacing, direction, origin, reference)
    if offset is not None:
        # Pasted in place into a zero image: no full-size array besides the mask itself.
        out = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        out.CopyInformation(reference)
        (x, y, z), (ny, nx) = offset, binary.shape[1:]
        for k in range(0, binary.shape[0], SLAB_SLICES):  # slab by slab: flipped views copied in small parts
            part = sitk.GetImageFromArray((binary[k:k + SLAB_SLICES] != 0).view(np.uint8))
            out[x:x + nx, y:y + ny, z + k:z + k + part.GetSize()[2]] = part
        return out
    img = sitk.GetImageFromArray(np.ascontiguousarray(binary))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return sitk.Resample(img, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _grid_offset(size, spacing, direction, origin, reference: sitk.Image) -> tuple[int, int, int] | None:
    """Index (x, y, z) of a grid's first voxel in `reference` when the grid is a block of the
    reference's voxels (same spacing and direction, origin on a reference voxel within 1 % of a
    voxel, inside it); None otherwise."""
    sp = np.asarray(reference.GetSpacing())
    if not (np.allclose(spacing, sp, rtol=1e-4, atol=0) and np.allclose(direction, reference.GetDirection(), atol=1e-4)):
        return None
    idx = np.asarray(reference.TransformPhysicalPointToContinuousIndex(origin))
    whole = np.round(idx)
    if np.any(np.abs(idx - whole) > 0.01) or np.any(whole < 0) or np.any(whole + size > reference.GetSize()):
        return None
    return tuple(int(v) for v in whole)


# ---------------------------------------------------------------- RTSTRUCT

def _physical_to_index(points_mm: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Continuous (x, y, z) indices of patient-coordinate points (N x 3, mm)."""
    d = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    return np.linalg.solve(d, (points_mm - np.array(image.GetOrigin())).T).T


def _fill(arr: np.ndarray, k: int, poly_xy: np.ndarray) -> None:
    """XOR-fill polygon (x = column, y = row index coordinates) into slice k: nested contours
    become holes, the usual RTSTRUCT convention."""
    ny, nx = arr.shape[1:]
    x0, y0 = np.floor(poly_xy.min(axis=0)).astype(int)
    x1, y1 = np.ceil(poly_xy.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, nx - 1), min(y1, ny - 1)
    if x1 < x0 or y1 < y0:
        return
    yy, xx = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    inside = Polygon(poly_xy).contains_points(np.column_stack([xx.ravel(), yy.ravel()])).reshape(yy.shape)
    arr[k, y0:y1 + 1, x0:x1 + 1] ^= inside.astype(np.uint8)


def _place_planar_contour(points_mm: np.ndarray, reference: Volume, arr: np.ndarray) -> str | None:
    """Rasterise one closed planar contour in patient coordinates; a reason if it cannot."""
    idx = _physical_to_index(points_mm, reference.image)
    z = idx[:, 2]
    k = int(round(float(z.mean())))
    if np.ptp(z) > 2 * OFF_SLICE_TOL or abs(z.mean() - k) > OFF_SLICE_TOL:
        return "contour is not in a slice plane of the reference volume"
    if not 0 <= k < arr.shape[0]:
        return "contour lies outside the reference volume"
    _fill(arr, k, idx[:, :2])
    return None


def _from_rtstruct(ds: Dataset, reference: Volume, synonyms: Synonyms) -> AnnotationRois:
    sop_uid = str(ds.SOPInstanceUID)
    names: dict[int, tuple[str, str | None]] = {}
    for item in ds.get("StructureSetROISequence", []):
        label = str(item.get("ROIName", f"ROI {item.ROINumber}"))
        names[int(item.ROINumber)] = (label, item.get("ReferencedFrameOfReferenceUID"))
    codes: dict[int, list[tuple[str, str]]] = {}
    for obs in ds.get("RTROIObservationsSequence", []):
        codes[int(obs.ReferencedROINumber)] = _codes(obs.get("RTROIIdentificationCodeSequence"))
    out = AnnotationRois()
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        label, for_uid = names.get(number, (f"ROI {number}", None))
        _check_frame_of_reference(sop_uid, for_uid, reference)
        role = synonyms.role(label, codes.get(number, []))
        if role is None:
            out.ignored.append(f"{label}: label and code not in the ROI synonyms")
            continue
        arr = _blank(reference)
        problems = []
        for contour in item.get("ContourSequence", []):
            if str(contour.get("ContourGeometricType", "")) != "CLOSED_PLANAR":
                problems.append(f"{contour.get('ContourGeometricType')} contour is not an area")
                continue
            pts = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            reason = _place_planar_contour(pts, reference, arr)
            if reason:
                problems.append(reason)
        out.ignored.extend(f"{label}: {p}" for p in sorted(set(problems)))
        if arr.any():
            out.rois.append(RoiMask(_to_image(arr, reference), _ref(role, sop_uid, label)))
        elif not problems:
            out.ignored.append(f"{label}: no contours")
    return out


# ---------------------------------------------------------------- TID 1500 SR

_MEASUREMENT_GROUP = ("DCM", "125007")
_IMAGE_REGION = ("DCM", "111030")
_TRACKING_ID = ("DCM", "112039")
_FINDING = ("DCM", "121071")


def _concept(item: Dataset) -> tuple[str, str] | None:
    seq = item.get("ConceptNameCodeSequence")
    return (str(seq[0].CodingSchemeDesignator), str(seq[0].CodeValue)) if seq else None


def _walk(items):
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _from_sr(ds: Dataset, reference: Volume, synonyms: Synonyms) -> AnnotationRois:
    sop_uid = str(ds.SOPInstanceUID)
    out = AnnotationRois()
    groups = [i for i in _walk(ds.get("ContentSequence"))
              if i.get("ValueType") == "CONTAINER" and _concept(i) == _MEASUREMENT_GROUP]
    for n, group in enumerate(groups, 1):
        children = list(group.get("ContentSequence", []))
        label = next((str(c.TextValue) for c in children if _concept(c) == _TRACKING_ID and "TextValue" in c),
                     f"measurement group {n}")
        findings = [
            (str(c.ConceptCodeSequence[0].CodingSchemeDesignator), str(c.ConceptCodeSequence[0].CodeValue))
            for c in children
            if _concept(c) == _FINDING and c.get("ConceptCodeSequence")
        ]
        regions = [c for c in children if _concept(c) == _IMAGE_REGION]
        if not regions:
            continue  # a group without image regions (e.g. a referenced segment, read from the SEG itself)
        # Finding code, else the tracking identifier. Not the finding site: a cyst "in the liver"
        # is not a liver parenchyma ROI.
        role = synonyms.role(label, findings)
        if role is None:
            out.ignored.append(f"{label}: finding and tracking identifier not in the ROI synonyms")
            continue
        arr = _blank(reference)
        problems = []
        for region in regions:
            reason = _place_sr_region(region, reference, arr)
            if reason:
                problems.append(reason)
        out.ignored.extend(f"{label}: {p}" for p in sorted(set(problems)))
        if arr.any():
            out.rois.append(RoiMask(_to_image(arr, reference), _ref(role, sop_uid, label)))
    return out


def _place_sr_region(region: Dataset, reference: Volume, arr: np.ndarray) -> str | None:
    gtype = str(region.get("GraphicType", ""))
    data = np.asarray(region.get("GraphicData", []), dtype=float)
    if region.ValueType == "SCOORD3D":
        for_uid = region.get("ReferencedFrameOfReferenceUID")
        if for_uid and reference.frame_of_reference_uid and for_uid != reference.frame_of_reference_uid:
            return f"region in frame of reference {for_uid}, not the reference series'"
        if gtype != "POLYGON":
            return f"3-D {gtype} region not supported (only POLYGON)"
        return _place_planar_contour(data.reshape(-1, 3), reference, arr)
    if region.ValueType != "SCOORD":
        return f"image region of value type {region.ValueType} not supported"
    # SCOORD: pixel coordinates (column, row) on a referenced image, (0, 0) = top-left corner of
    # the top-left pixel, so pixel centres are at +0.5 (PS3.3 C.18.6.1.1).
    refs = [c for c in region.get("ContentSequence", []) if c.get("ValueType") == "IMAGE"]
    if not refs:
        return "planar region without a referenced image"
    sop = refs[0].ReferencedSOPSequence[0]
    uid = str(sop.ReferencedSOPInstanceUID)
    frame = int(sop.ReferencedFrameNumber) if "ReferencedFrameNumber" in sop else None
    slices = [k for k, (u, f) in enumerate(zip(reference.sop_instance_uids, reference.frame_numbers))
              if u == uid and (frame is None or f is None or f == frame)]
    if len(slices) != 1:
        return f"referenced image {uid} is not a single slice of the reference volume"
    pts = data.reshape(-1, 2) - 0.5
    if gtype == "POLYLINE" and len(pts) > 2 and np.allclose(pts[0], pts[-1]):
        gtype = "POLYGON"
    if gtype == "POLYGON":
        poly = pts
    elif gtype == "CIRCLE":
        r = float(np.linalg.norm(pts[1] - pts[0]))
        t = np.linspace(0, 2 * np.pi, 73)
        poly = pts[0] + r * np.column_stack([np.cos(t), np.sin(t)])
    elif gtype == "ELLIPSE":
        centre = (pts[0] + pts[1]) / 2
        a, b = (pts[1] - pts[0]) / 2, (pts[3] - pts[2]) / 2
        t = np.linspace(0, 2 * np.pi, 73)[:, None]
        poly = centre + np.cos(t) * a + np.sin(t) * b
    else:
        return f"planar {gtype} region is not an area"
    _fill(arr, slices[0], poly)
    return None
