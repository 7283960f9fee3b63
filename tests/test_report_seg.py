import highdicom as hd
import numpy as np
import pydicom
import pytest
from report_support import dciodvfy, shared_case, shared_outputs

from hccnode.imaging.measure import READER, RoiRef
from hccnode.report import Reference, ReportRoi
from hccnode.report.inputs import run_of, tracking
from hccnode.report.seg import build_seg
from hccnode.report.templates import load_template


@pytest.fixture(scope="session")
def case(tmp_path_factory):
    return shared_case(tmp_path_factory)


@pytest.fixture(scope="session")
def seg_path(tmp_path_factory):
    return shared_outputs(tmp_path_factory)["seg"]


def test_seg_is_valid_dicom(seg_path):
    errors, warnings = dciodvfy(seg_path)
    assert errors == [] and warnings == []


def test_seg_masks_equal_the_input_masks(case, seg_path):
    seg = hd.seg.segread(seg_path)
    uids = [str(d.SOPInstanceUID) for d in case.reference]
    numbers = list(range(1, len(case.rois) + 1))
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=numbers,
                                               assert_missing_frames_are_empty=True)
    for i, roi in enumerate(case.rois):
        np.testing.assert_array_equal(pixels[..., i].astype(bool), roi.mask, err_msg=roi.describe())


def test_segments_say_who_drew_them_and_what_they_are(case, seg_path):
    ds = pydicom.dcmread(seg_path)
    assert ds.SegmentationType == "BINARY"
    template = load_template()
    for roi, item in zip(case.rois, ds.SegmentSequence):
        role = template.roles[roi.ref.name]
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == role.category.value
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == role.type.value
        if roi.ref.source == READER:
            assert item.SegmentAlgorithmType == "MANUAL" and "SegmentationAlgorithmIdentificationSequence" not in item
        else:
            assert item.SegmentAlgorithmType == "AUTOMATIC"
            assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName.startswith("hccnode")
    kinds = {item.SegmentAlgorithmType for item in ds.SegmentSequence}
    assert kinds == {"MANUAL", "AUTOMATIC"}
    tumor = next(i for r, i in zip(case.rois, ds.SegmentSequence) if r.ref.name == "tumor")
    assert tumor.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # SCT Neoplasm
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == case.reference[0].SeriesInstanceUID


def test_tracking_uids_follow_the_roi_not_the_analysis(case):
    ref = Reference(case.reference)
    labels = {"tumor": "Tumor", "liver": "Liver", "aorta": "Aorta", "muscle": "Erector spinae"}
    first = tracking(case.rois, ref, labels)
    again = tracking(list(case.rois), ref, labels)
    assert [t.uid for t in first] == [t.uid for t in again]
    assert len({t.uid for t in first}) == len(first)
    assert [t.identifier for t in first if "Liver" in t.identifier] == ["Liver 1 (reader)", "Liver 2 (automatic)"]


def test_bad_roi_inputs_are_named(case):
    with pytest.raises(ValueError, match=r"ROI tumor x \(reader\): mask is empty"):
        ReportRoi(RoiRef("tumor", READER, label="x"), np.zeros((2, 3, 3), bool))
    small = ReportRoi(RoiRef("tumor", READER, label="x"), np.ones((2, 3, 3), bool))
    ref = Reference(case.reference)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3\) is not the reference series' grid"):
        build_seg(ref, [small], tracking([small], ref, {}), load_template(), "2.25.1", "2.25.2", 1)


@pytest.mark.parametrize("overlap", [False, True])
def test_masks_read_back_whether_or_not_rois_overlap(case, tmp_path, overlap):
    # Disjoint ROIs go to highdicom as a label map, overlapping ones as a stack: same frames.
    by_role = {r.ref.name: r for r in case.rois if r.ref.source == READER}
    liver = by_role["liver"].mask & ~by_role["tumor"].mask
    if overlap:
        liver = liver | by_role["tumor"].mask
    rois = [by_role["tumor"], ReportRoi(by_role["liver"].ref, liver), by_role["aorta"]]
    ref = Reference(case.reference)
    ds = build_seg(ref, rois, tracking(rois, ref, {}), load_template(), "2.25.1", "2.25.2", 1)
    assert ds.SegmentsOverlap == ("YES" if overlap else "NO")
    path = tmp_path / "seg.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == ([], [])
    covered = np.any([r.mask for r in rois], axis=(0, 2, 3))
    uids = [str(d.SOPInstanceUID) for d, c in zip(case.reference, covered) if c]
    assert [str(s.ReferencedSOPInstanceUID) for s in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == uids
    pixels = hd.seg.segread(path).get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2, 3], assert_missing_frames_are_empty=True)
    for i, roi in enumerate(rois):
        np.testing.assert_array_equal(pixels[..., i].astype(bool), roi.mask[covered], err_msg=roi.describe())
    # each segment carries its role's display colour from the template (viewers otherwise pick their own)
    template = load_template()
    for roi, segment in zip(rois, hd.seg.segread(path).SegmentSequence):
        want = template.roles[roi.ref.name].color
        got = hd.color.CIELabColor.from_dicom_value(segment.RecommendedDisplayCIELabValue).to_rgb()
        assert max(abs(a - b) for a, b in zip(got, want)) <= 1, (roi.describe(), got, want)


def test_run_of_gives_a_slice_only_for_consecutive_indices():
    assert run_of(np.array([3, 4, 5])) == slice(3, 6)
    assert run_of(np.array([7])) == slice(7, 8)
    for idx in ([], [3, 5], [5, 4], [3, 4, 4]):
        assert run_of(np.array(idx, dtype=int)) is None


def test_a_roi_keeps_a_read_only_mask_and_copies_any_other(case):
    liver = next(r for r in case.rois if r.ref.name == "liver")
    mine = liver.mask.copy()
    copied = ReportRoi(liver.ref, mine)
    assert not np.shares_memory(copied.mask, mine) and not copied.mask.flags.writeable
    adopted = ReportRoi.adopt(liver.ref, mine)
    assert adopted.mask is mine and not mine.flags.writeable
    assert adopted.digest == liver.digest and adopted.box == liver.box
