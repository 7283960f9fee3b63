"""Parametric Map of voxelwise ECV, restricted to the liver mask, one frame per image of the
reference series.

What a viewer needs, read from OHIF 3.12.0's code (npm `@ohif/app` dist: the
`@cornerstonejs/adapters` ParametricMap adapter and the `cornerstone-dicom-pmap` extension;
issue 17):
- one frame per referenced image, in the volume's order: the adapter copies frame i into the slot
  of the image it references inside a buffer as long as the map's own pixel data (so a map with
  fewer frames than the series has images fails, RangeError), then returns the frames unmoved:
  frame k is drawn on slice k of OHIF's volume, ascending along the slice normal. The frames are
  written in that order (`frames_up_the_normal`);
- OHIF multiplies every stored value by 100 and ignores the Real World Value Mapping: the map
  stores ECV as a fraction (0.30) with a mapping of slope 100 to % (LUT label "ECV (%)"), so a
  DICOM reader applying the mapping and OHIF both show 30;
- OHIF draws the map (x 100) over a fixed window 0-100, transparent at 0: the padding lies just
  below the lowest value (PADDING_MARGIN under the lowest value or 0, whichever is lower), so it is
  never drawn nor taken for a value; it is declared as Float Pixel Padding Value (0028,0122) and
  lies inside the declared value range.
"""

from __future__ import annotations

import struct
from typing import Callable, Iterator, Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

import hccnode
from hccnode.imaging.boxed import BoxedArray
from hccnode.imaging.roi_stats import bounding_box
from hccnode.report.inputs import Reference

SLOPE = 100.0           # stored fraction x 100 = ECV in %
PADDING_MARGIN = 0.01   # padding: one percentage point of ECV below the lowest stored value (or below 0)
LUT_LABEL = "ECV (%)"   # Real World Value Mapping LUT Label (SH, 16 characters at most)
WINDOW = (0.30, 0.60, "ECV 0-60 %")  # centre, width (stored fractions) and explanation
FLOAT_PIXEL_DATA = 0x7FE00008  # (7FE0,0008) Float Pixel Data


def padding_for(low: float) -> float:
    """The padding value of a map whose lowest stored value is `low`: PADDING_MARGIN below
    min(low, 0), as float32 (what the pixel data holds), so no value is ever taken for padding."""
    return float(np.float32(min(low, 0.0) - PADDING_MARGIN))


class _ParametricMap(hd.pm.ParametricMap):
    """highdicom's ParametricMap whose Float Pixel Data is written by `save_as` frame by frame,
    from the liver's slices and one plane of padding: the ~210 MB map (200 x 512^2) never exists
    as one array (allocating and filling it cost ~0.5 s of page faults before anything was
    written), nor as highdicom's bytes (it copies each frame and joins them). Frame j is
    `self._plane(self._order[j])` (`frames_up_the_normal` sets both). `_encode_pixels_native`
    overrides a private highdicom method (0.28): were it renamed, highdicom would encode the
    placeholder frames it was given, and `save_as` would still write these instead."""

    def _encode_pixels_native(self, planes: np.ndarray) -> bytes:
        return b""

    def save_as(self, filename, *args, **kwargs) -> None:
        """The header through pydicom, then the Float Pixel Data element (the last in the data
        set, Explicit VR Little Endian) appended, one frame at a time."""
        if not hasattr(self, "_order"):
            return super().save_as(filename, *args, **kwargs)
        if self.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian or any(t > FLOAT_PIXEL_DATA for t in self.keys()):
            raise ValueError("ECV map: the frames are appended in Explicit VR Little Endian, after every other element")
        super().save_as(filename, *args, **kwargs)
        if hasattr(filename, "write"):   # a buffer pydicom wrote the header to
            self._append_frames(filename)
        else:
            with open(filename, "ab") as f:
                self._append_frames(f)

    def _append_frames(self, f) -> None:
        frame_bytes = int(self.Rows) * int(self.Columns) * 4
        f.write(struct.pack("<HH2sHI", FLOAT_PIXEL_DATA >> 16, FLOAT_PIXEL_DATA & 0xFFFF, b"OF", 0,
                            frame_bytes * len(self._order)))
        for frame in self._frames():
            f.write(frame)

    def _frames(self) -> Iterator[memoryview]:
        for k in self._order:
            yield memoryview(np.ascontiguousarray(self._plane(int(k)), dtype="<f4")).cast("B")


def frames_up_the_normal(pm: _ParametricMap, plane: Callable[[int], np.ndarray],
                         keys: Sequence[tuple[str, int | None]]) -> None:
    """Order the frames of `pm` by position along the slice normal (row cosines x column cosines),
    lowest first: the order of OHIF 3.12's volume (cornerstone3D sortImageIdsAndGetSpacing), in
    which its map loader lays frames out by their index (it computes each frame's place from the
    image it references, then returns the frames as they were). highdicom writes them the other way.
    The per-frame functional groups are sorted, and each frame will be written (`save_as`) from
    `plane(j)` (float32, plane j on the image `keys[j]` = (SOP Instance UID, frame number or
    None)), the plane of the image its functional group references."""
    shared = pm.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    items = list(pm.PerFrameFunctionalGroupsSequence)
    along = [float(np.dot(np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float), normal)) for f in items]
    order = np.argsort(along, kind="stable")
    if not np.array_equal(order, np.arange(len(items))):
        items = [items[k] for k in order]
        pm.PerFrameFunctionalGroupsSequence = items
    plane_of = {key: j for j, key in enumerate(keys)}
    source = [f.DerivationImageSequence[0].SourceImageSequence[0] for f in items]
    try:
        take = np.array([plane_of[(str(s.ReferencedSOPInstanceUID),
                                   int(s.ReferencedFrameNumber) if "ReferencedFrameNumber" in s else None)]
                         for s in source])
    except KeyError as exc:
        raise ValueError(f"ECV map: frame on image {exc.args[0]} has no plane in the map") from None
    if len(take) != len(keys) or len(set(take.tolist())) != len(take):
        raise ValueError(f"ECV map: {len(take)} frames for {len(keys)} planes")
    pm._order, pm._plane = take, plane
    if FLOAT_PIXEL_DATA in pm:          # highdicom's empty placeholder (_encode_pixels_native)
        del pm[FLOAT_PIXEL_DATA]


def build_ecv_map(reference: Reference, ecv_percent: np.ndarray | BoxedArray, liver: np.ndarray, quantity: CodedConcept,
                  region: CodedConcept, series_uid: str, sop_uid: str, series_number: int) -> hd.pm.ParametricMap:
    """The ECV map on `reference` (array or BoxedArray z, y, x in %, NaN where not computed), kept
    inside `liver`, one frame per image (or frame) of the reference.
    `quantity` is the ECV concept and `region` the liver's code, both from the SR template."""
    reference.check(ecv_percent, "ECV map")
    reference.check(liver, "liver mask")
    liver = np.asarray(liver, dtype=bool)
    # Only the slices from the first to the last with liver can hold a value: the masking and
    # the range below touch those alone (4 bytes a voxel).
    box = bounding_box(liver)
    span = box[0] if box is not None else slice(0, 0)
    fraction = np.asarray(ecv_percent[span], dtype=np.float32) / np.float32(SLOPE)
    valid = liver[span] & np.isfinite(fraction)
    if not valid.any():
        raise ValueError("ECV map has no finite value inside the liver mask")
    low = float(fraction.min(where=valid, initial=np.inf))
    high = float(fraction.max(where=valid, initial=-np.inf))
    padding = padding_for(low)
    fraction[~valid] = padding          # the liver's slices, masked in place
    pad_plane = np.full(reference.shape[1:], padding, np.float32)
    sources, idx = reference.sources_for(np.ones(reference.shape[0], bool))

    def plane(j: int) -> np.ndarray:
        """Plane j of the map (on slice idx[j] of the reference)."""
        k = int(idx[j]) - span.start
        return fraction[k] if 0 <= k < len(fraction) else pad_plane

    mapping = hd.pm.RealWorldValueMapping(
        lut_label=LUT_LABEL,
        lut_explanation="Extracellular volume fraction (%)",
        unit=codes.UCUM.Percent,
        value_range=(padding, high),
        slope=SLOPE,
        intercept=0.0,
        quantity_definition=quantity,
    )
    center, width, explanation = WINDOW
    pm = _ParametricMap(
        source_images=sources,
        # highdicom reads the frames' shape and type from this; the values are written by save_as
        pixel_array=np.broadcast_to(pad_plane, (len(idx), *pad_plane.shape)),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="hccnode",
        manufacturer_model_name="hccnode",
        software_versions=hccnode.__version__,
        device_serial_number="hccnode",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        # One window, given as one-item lists: highdicom writes a str explanation as list(str),
        # one value per character (issue 17); a list keeps it one value.
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=[center], window_width=[width],
                                                         window_explanation=[explanation],
                                                         voi_lut_function="LINEAR_EXACT")],
        content_label="ECV_MAP",
        content_description=f"ECV in the liver mask, fraction x {SLOPE:g} = %; {padding:g} = no value",
        series_description="hccnode ECV map (research)",
    )
    keys = ([(str(sources[0].SOPInstanceUID), j + 1) for j in range(len(idx))] if reference.multiframe
            else [(str(ds.SOPInstanceUID), None) for ds in sources])
    frames_up_the_normal(pm, plane, keys)
    # A single padding value, given as the range [padding, padding] so the condition on the
    # range limit (PS3.3 C.7.6.24) is unambiguous for validators.
    pm.FloatPixelPaddingValue = padding
    pm.FloatPixelPaddingRangeLimit = padding
    # Frame anatomy: the liver, an unpaired structure (Frame Laterality U).
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [region]
    anatomy.FrameLaterality = "U"
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]
    return pm
