"""Whole-organ masks from a site's segmentation tool, told apart from a reader's annotations.

Many sites run a segmentation model (TotalSegmentator, a MONAI bundle, a vendor's tool) that
writes whole-organ DICOM SEGs into the study. Such a mask is not a reader's ROI: the node places
paper 001's three ~100 mm^2 liver ROIs and its aortic ROI INSIDE it, by the same rules as when
it finds the organ itself (hccnode.imaging.auto_rois.ct_roi_masks_in_organs), instead of
averaging the whole organ.

The rule (`is_organ_mask`), per SEG segment whose role (hccnode/data/roi_synonyms.toml: code,
else name) is an organ the markers use (liver, aorta, erector spinae = role "muscle"):

1. its Segment Algorithm Type (0062,0008) is AUTOMATIC. PS3.3 C.8.20.2 defines MANUAL (drawn by
   a person), SEMIAUTOMATIC (a person assisted by a tool) and AUTOMATIC (no person); a reader's
   annotation is one of the first two, whatever its size (a reader who outlined the whole liver
   still means the whole liver), and
2. it is organ-sized: at least ORGAN_MIN_ML. Paper 001's ROIs are ~100 mm^2; even stacked over
   5 cm such a ROI holds 5 mL, while the smallest organ used here, the abdominal aorta (about
   2 cm across), holds more than 10 mL over 3.5 cm of its length. An AUTOMATIC segment of ROI
   size (a site's own ROI-placing tool) stays what it was before: an annotation that wins.

A tumor segment is never an organ mask (a tumor is never placed automatically). Other segments
of an organ SEG (TotalSegmentator writes over 100; the spleen, SCT 78961009, among them) are not
used: no marker of papers 000-003 needs them, and the note says so once per SEG.

Codes (SegmentedPropertyTypeCodeSequence, in roi_synonyms.toml): Liver SCT 10200004, Aorta SCT
15825003, Abdominal aorta SCT 7832008, Erector spinae muscle SCT 44947003 (DICOM PS3.16, as in
pydicom's code dictionary `codes.SCT.Liver`, `.Aorta`, `.AbdominalAorta`, `.ErectorSpinaeMuscle`),
and Deep muscle of back SCT 244849004, TotalSegmentator's code for `autochthon_left` /
`autochthon_right` (with a Left / Right modifier; wasserth/TotalSegmentator,
totalsegmentator/resources/totalsegmentator_snomed_mapping.csv): the autochthonous back muscles,
the erector spinae and the transversospinal group beneath it, which is the paraspinal region
paper 003 places its muscle ROI in. TotalSegmentator's own DICOM SEG writer (dicom_io.py,
`save_mask_as_dicomseg`, highdicom) writes exactly what the rule reads: AUTOMATIC segments with
Algorithm Identification "TotalSegmentator" and its version, family Artificial Intelligence, the
class name as Segment Label, and for a class missing from its mapping the generic type Tissue
(SCT 85756007), which is why a segment is also recognised by its label.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

ORGAN_ROLES = ("liver", "aorta", "muscle")
# Smallest volume of an AUTOMATIC segment taken as a whole organ (see the module docstring).
ORGAN_MIN_ML = 10.0


def is_organ_mask(role: str | None, algorithm_type: str | None, volume_ml: float) -> bool:
    """True for a site's whole-organ mask: an organ role, AUTOMATIC, at least ORGAN_MIN_ML."""
    return role in ORGAN_ROLES and str(algorithm_type or "").upper() == "AUTOMATIC" and volume_ml >= ORGAN_MIN_ML


def segment_item(ds: Dataset, label: str | None) -> Dataset | None:
    """The Segment Sequence item of a SEG with this label (hccnode.imaging.rois names a segment
    without a label 'segment <number>'); None when the object is not a SEG or has no such segment."""
    for item in ds.get("SegmentSequence") or []:
        if str(item.get("SegmentLabel", f"segment {item.get('SegmentNumber')}")) == label:
            return item
    return None


def describe(ds: Dataset, labels: list[str]) -> str:
    """The mask's source for the SR: segments, the SEG and its series, the algorithm (Segment
    Algorithm Name, and the Segmentation Algorithm Identification's name and version when
    given), and the SEG's Manufacturer, Software Versions and Content Creator's Name."""
    items = [i for i in (segment_item(ds, label) for label in labels) if i is not None]
    algorithms = []
    for item in items:
        name = str(item.get("SegmentAlgorithmName", "") or "")
        ident = item.get("SegmentationAlgorithmIdentificationSequence") or []
        if ident:
            name = name or str(ident[0].get("AlgorithmName", ""))
            version = str(ident[0].get("AlgorithmVersion", "") or "")
            name = f"{name} {version}".strip() if version and version not in name else name
        algorithms.append(name or "(algorithm not named)")
    parts = [f"segment{'s' if len(labels) > 1 else ''} {', '.join(repr(x) for x in labels)} of SEG "
             f"{ds.get('SOPInstanceUID', '?')} (series {ds.get('SeriesInstanceUID', '?')})",
             f"algorithm {' / '.join(dict.fromkeys(algorithms)) or '(not named)'} (AUTOMATIC)"]
    for keyword, what in (("Manufacturer", "manufacturer"), ("SoftwareVersions", "software"),
                          ("ContentCreatorName", "content creator")):
        value = ds.get(keyword)
        if value not in (None, ""):
            text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue) else str(value)
            parts.append(f"{what} {text}")
    return "; ".join(parts)

