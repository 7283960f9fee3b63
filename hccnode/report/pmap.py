"""Parametric Map of voxelwise ECV (%), restricted to the liver mask.

Float pixel data (32-bit) with a real-world value mapping in UCUM '%'. Voxels outside the liver
mask, or without a value (NaN: no data after registration), hold PADDING and the map declares it
as Float Pixel Padding Value (0028,0122), so viewers and readers can tell 'no value' from a value.
Only slices that contain liver are encoded (single-frame reference); each frame references the
source image it lies on.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import hccnode
from hccnode.imaging.boxed import BoxedArray
from hccnode.imaging.roi_stats import bounding_box
from hccnode.report.inputs import Reference, run_of

# Far outside any ECV (0..100 %) and exactly representable in float32.
PADDING = -1024.0


def masked_map(ecv_percent: np.ndarray, liver: np.ndarray) -> np.ndarray:
    """float32 map: ECV inside the liver where finite, PADDING elsewhere."""
    values = np.asarray(ecv_percent, dtype=np.float32)
    out = np.full(values.shape, PADDING, np.float32)  # one new array (np.where + astype made two)
    np.copyto(out, values, where=np.asarray(liver, dtype=bool) & np.isfinite(values))
    return out


def _frames(values: np.ndarray, start: int, idx: np.ndarray) -> np.ndarray:
    """Slices `idx` of a volume whose slices `start`, `start` + 1, ... are `values` and whose
    others are all PADDING. Consecutive slices within `values` (the usual single-frame case) are
    a view; otherwise (e.g. every frame of a multi-frame source) a copy, padded."""
    at = idx - start
    run = run_of(at)
    if run is not None and run.start >= 0 and run.stop <= len(values):
        return values[run]
    out = np.empty((len(at), *values.shape[1:]), np.float32)
    inside = (at >= 0) & (at < len(values))
    out[~inside] = PADDING
    out[inside] = values[at[inside]]
    return out


def build_ecv_map(reference: Reference, ecv_percent: np.ndarray | BoxedArray, liver: np.ndarray, quantity: CodedConcept,
                  region: CodedConcept, series_uid: str, sop_uid: str, series_number: int) -> hd.pm.ParametricMap:
    """The ECV map on `reference` (array or BoxedArray z, y, x in %, NaN where not computed), kept
    inside `liver`.
    `quantity` is the ECV concept and `region` the liver's code, both from the SR template."""
    reference.check(ecv_percent, "ECV map")
    reference.check(liver, "liver mask")
    liver = np.asarray(liver, dtype=bool)
    # Only the slices from the first to the last with liver can hold a value: the masking and
    # the range below then touch those alone, not the whole volume (4 bytes a voxel).
    box = bounding_box(liver)
    span = box[0] if box is not None else slice(0, 0)
    values = masked_map(ecv_percent[span], liver[span])
    valid = values != PADDING
    if not valid.any():
        raise ValueError("ECV map has no finite value inside the liver mask")
    covered = np.zeros(reference.shape[0], bool)
    covered[span] = valid.any(axis=(1, 2))
    sources, idx = reference.sources_for(covered)
    pixels = _frames(values, span.start, idx)
    low = float(values.min(where=valid, initial=np.inf))
    high = float(values.max(where=valid, initial=-np.inf))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ECV",
        lut_explanation="Extracellular volume fraction (%)",
        unit=codes.UCUM.Percent,
        value_range=(low, high),
        slope=1.0,
        intercept=0.0,
        quantity_definition=quantity,
    )
    pm = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=pixels,
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
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=30.0, window_width=60.0,
                                                         window_explanation="ECV 0-60 %")],
        content_label="ECV_MAP",
        content_description=f"ECV in the liver mask; {PADDING:g} = no value",
        series_description="hccnode ECV map (research)",
    )
    # A single padding value, given as the range [PADDING, PADDING] so the condition on the
    # range limit (PS3.3 C.7.6.24) is unambiguous for validators.
    pm.FloatPixelPaddingValue = PADDING
    pm.FloatPixelPaddingRangeLimit = PADDING
    # Frame anatomy: the liver, an unpaired structure (Frame Laterality U).
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [region]
    anatomy.FrameLaterality = "U"
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]
    return pm
