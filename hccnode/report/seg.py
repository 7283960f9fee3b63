"""DICOM Segmentation (BINARY) of every ROI measured, so viewers show where the numbers came from.

One segment per ROI, in the order given (segment number = position + 1, as the SR references
them). A reader's ROI is a MANUAL segment; an automatic one is AUTOMATIC with the node's
algorithm identification. Property category / type come from the SR template's roles.
"""

from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

import hccnode
from hccnode.imaging.measure import READER
from hccnode.report.inputs import Reference, ReportRoi, Tracking, run_of
from hccnode.report.templates import Template

# The automatic ROIs are placed by thresholds and morphology on the images (DCM CID 7162).
AUTOMATIC_FAMILY = codes.cid7162.MorphologicalOperations
AUTOMATIC_NAME = "hccnode automatic ROI placement"


def frames(rois: Sequence[ReportRoi], idx: np.ndarray) -> np.ndarray:
    """The z slices `idx` of the ROIs as highdicom takes them: a label map (z, y, x; 0 = none,
    n = the n-th ROI) when no two ROIs share a voxel, else the masks stacked (z, y, x, ROI).
    highdicom writes the same BINARY frames from either; from a stack it tests the overlap with
    a sum over the whole stack as int64 (~1 s for 3 ROIs on 200 slices of 512 x 512), from a
    label map it needs only the maximum (SegmentsOverlap is NO, as the stack's test would say)."""
    run = run_of(idx)
    take = idx if run is None else run
    labels = np.zeros(rois[0].mask.shape, np.min_scalar_type(len(rois)))
    for n, r in enumerate(rois, 1):
        part, mask = labels[r.box], r.mask[r.box]  # only the box this ROI lies in
        if part[mask].any():  # overlap: only a stack says which ROI each voxel is in
            return np.stack([r.mask[take] for r in rois], axis=-1)
        part[mask] = n
    return labels[take]


def build_seg(reference: Reference, rois: Sequence[ReportRoi], tracks: Sequence[Tracking], template: Template,
              series_uid: str, sop_uid: str, series_number: int,
              automatic_family: CodedConcept = AUTOMATIC_FAMILY) -> hd.seg.Segmentation:
    """A BINARY SEG of `rois` on `reference` (frames without any ROI are left out)."""
    if not rois:
        raise ValueError("no ROIs to put in a segmentation")
    for r in rois:
        reference.check(r.mask, f"ROI {r.describe()}")
    sources, idx = reference.sources_for(np.any([r.areas > 0 for r in rois], axis=0))
    descriptions = []
    for r, t in zip(rois, tracks):
        role = template.roles[r.ref.name]
        manual = r.ref.source == READER
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=t.segment_number,
            segment_label=t.identifier,
            segmented_property_category=role.category,
            segmented_property_type=role.type,
            algorithm_type="MANUAL" if manual else "AUTOMATIC",
            algorithm_identification=None if manual else hd.AlgorithmIdentificationSequence(
                name=AUTOMATIC_NAME, family=automatic_family, version=hccnode.__version__),
            tracking_uid=t.uid,
            tracking_id=t.identifier,
            anatomic_regions=[role.site],
            display_color=hd.color.CIELabColor.from_rgb(*role.color) if role.color else None,
        ))
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames(rois, idx),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="hccnode",
        manufacturer_model_name="hccnode",
        software_versions=hccnode.__version__,
        device_serial_number="hccnode",
        content_label="HCCNODE_ROIS",
        content_description="Regions measured by hccnode (research use)",
        series_description="hccnode ROIs (research)",
    )
