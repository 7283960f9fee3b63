"""A reader's annotation of the phantom as DICOM SEG (highdicom): tumor, liver, aorta, erector spinae.

Drawn on one series of the baseline study (the chosen phase), from the same analytic shapes and
the same misregistration as that series, so the masks are exact for that series only.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from hccnode import __version__
from hccnode.phantom import dicomio
from hccnode.phantom.anatomy import Label, label_slice
from hccnode.phantom.images import Grid

SEGMENTS = [  # (number, label, category, type, labels in the phantom)
    (1, "Tumor", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, "tumor"),
    (2, "Liver", codes.SCT.Organ, codes.SCT.Liver, (Label.LIVER,)),
    (3, "Aorta", codes.SCT.AnatomicalStructure, codes.SCT.Aorta, (Label.AORTA,)),
    (4, "Erector spinae", codes.SCT.Muscle, codes.SCT.ErectorSpinaeMuscle, (Label.ERECTOR_SPINAE,)),
]


def write_seg(spec, truth, out: Path) -> None:
    """Write the SEG for spec.seg_phase and add it to truth (kind "seg"): on the baseline study,
    and for MR also on the follow-up study (its own, smaller tumor and its own position), since
    paper 003 measures both."""
    studies = [0, 1] if spec.kind == "mr" else [0]
    for index in studies:
        _write_seg(spec, truth, out, index)


def _write_seg(spec, truth, out: Path, index: int) -> None:
    from hccnode.phantom.generate import make_tumors

    study = truth.data["studies"][index]
    source = next(s for s in study["series"] if s["phase"] == spec.seg_phase and not s["kind"].startswith("dect"))
    files = sorted((out / source["folder"]).glob("*.dcm"))
    images = [pydicom.dcmread(f) for f in files]
    images.sort(key=lambda d: int(d.InstanceNumber))
    grid = Grid(spec.matrix, spec.pixel_mm, spec.slices, spec.spacing, spec.slice_thickness_mm)
    tumors = make_tumors(spec, spec.followup_diameter_factor if index == 1 else 1.0)
    # as the series was written (hccnode.phantom.mr: the phase's own motion, else the study's)
    motion = spec.motion.get(spec.seg_phase) or (spec.motion.get("followup") if index == 1 else None)
    masks = np.zeros((spec.slices, spec.matrix, spec.matrix), dtype=np.uint8)
    for k in range(spec.slices):
        lab = label_slice(grid.x, grid.y, grid.body_z(k), tumors, spec.vessels, motion)
        for number, _, _, _, labels in SEGMENTS:
            if labels == "tumor":
                masks[k][lab >= Label.TUMOR] = number
            else:
                masks[k][np.isin(lab, labels)] = number
    descriptions = [hd.seg.SegmentDescription(segment_number=n, segment_label=name, segmented_property_category=cat,
                                              segmented_property_type=typ, algorithm_type="MANUAL")
                    for n, name, cat, typ, _ in SEGMENTS]
    series_uid = dicomio.uid(spec.seed, study["label"], "seg", spec.seg_phase, "series")
    sop_uid = dicomio.uid(spec.seed, study["label"], "seg", spec.seg_phase, "instance")
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=masks,
        segmentation_type="BINARY", segment_descriptions=descriptions, series_instance_uid=series_uid,
        series_number=9000 + int(source["series_number"]) % 1000, sop_instance_uid=sop_uid, instance_number=1,
        manufacturer="hccnode", manufacturer_model_name="phantom reader annotation",
        software_versions=__version__, device_serial_number="PHANTOM0001",
        content_label="READER", content_description=f"Phantom reader annotation on {spec.seg_phase}",
        content_creator_name="PHANTOM^READER", series_description=f"Reader ROIs {spec.seg_phase}")
    folder = Path(source["folder"]).parent / f"{seg.SeriesNumber:04d}_seg_{spec.seg_phase}"
    (out / folder).mkdir(parents=True, exist_ok=True)
    seg.save_as(out / folder / "SEG00001.dcm")
    study["series"].append({
        "kind": "seg", "phase": spec.seg_phase, "series_instance_uid": series_uid, "series_number": int(seg.SeriesNumber),
        "description": seg.SeriesDescription, "folder": str(folder), "n_instances": 1, "sop_instance_uids": [sop_uid],
        "referenced_series_instance_uid": source["series_instance_uid"],
        "segments": {str(n): name for n, name, *_ in SEGMENTS}})
    if motion is not None:  # drawn on the moved anatomy, as its series
        study["series"][-1]["motion"] = {"shift_mm": list(motion.shift_mm), "rotation_deg": motion.rotation_deg}
