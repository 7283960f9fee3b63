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

from typing import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import hccnode
from hccnode.imaging.boxed import BoxedArray
from hccnode.imaging.roi_stats import bounding_box
from hccnode.report.inputs import Reference, run_of

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
    """highdicom's ParametricMap without its copy of the pixels: highdicom copies each frame into
    bytes and joins them (two copies of a ~210 MB map), then the frames are sorted anyway;
    `frames_up_the_normal` writes the Float Pixel Data once, in the final order. This overrides a
    private highdicom method (0.28): were it renamed, highdicom would encode the frames as before
    and `frames_up_the_normal` would still replace them, so the map stays the same."""

    def _encode_pixels_native(self, planes: np.ndarray) -> bytes:
        return b""


def frames_up_the_normal(pm: Dataset, planes: np.ndarray, keys: Sequence[tuple[str, int | None]]) -> None:
    """Order the frames of `pm` by position along the slice normal (row cosines x column cosines),
    lowest first: the order of OHIF 3.12's volume (cornerstone3D sortImageIdsAndGetSpacing), in
    which its map loader lays frames out by their index (it computes each frame's place from the
    image it references, then returns the frames as they were). highdicom writes them the other way.
    The per-frame functional groups are sorted, and the Float Pixel Data is written from `planes`
    (float32, plane j on the image `keys[j]` = (SOP Instance UID, frame number or None)), each
    frame the plane of the image its functional group references."""
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
    if len(take) != len(planes) or len(set(take.tolist())) != len(take):
        raise ValueError(f"ECV map: {len(take)} frames for {len(planes)} planes")
    in_order = planes if np.array_equal(take, np.arange(len(take))) else planes[take]
    # The frames' own memory, not a ~210 MB copy of it: pydicom writes any bytes-like value, and
    # only its check that an OF value is of type bytes is skipped (the value is float32 data).
    data = memoryview(np.ascontiguousarray(in_order, dtype=np.float32)).cast("B")
    pm[FLOAT_PIXEL_DATA] = DataElement(FLOAT_PIXEL_DATA, "OF", data, validation_mode=config.IGNORE)


def masked_map(ecv_fraction: np.ndarray, liver: np.ndarray, padding: float, out: np.ndarray | None = None) -> np.ndarray:
    """float32 map: the value inside the liver where finite, `padding` elsewhere; written into
    `out` (float32, already holding `padding`) when given, else into one new array."""
    values = np.asarray(ecv_fraction, dtype=np.float32)
    if out is None:
        out = np.full(values.shape, padding, np.float32)
    np.copyto(out, values, where=np.asarray(liver, dtype=bool) & np.isfinite(values))
    return out


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
    volume = np.full(reference.shape, padding, np.float32)
    masked_map(fraction, liver[span], padding, out=volume[span])   # in place: no second map-sized array
    sources, idx = reference.sources_for(np.ones(reference.shape[0], bool))
    run = run_of(idx)   # consecutive slices (single-frame sources): a view of the volume, not a copy
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
    planes = volume[run] if run is not None else volume[idx]
    pm = _ParametricMap(
        source_images=sources,
        pixel_array=planes,
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
    keys = ([(str(sources[0].SOPInstanceUID), j + 1) for j in range(len(planes))] if reference.multiframe
            else [(str(ds.SOPInstanceUID), None) for ds in sources])
    frames_up_the_normal(pm, planes, keys)
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
