from dataclasses import replace

import pydicom
import pytest
from report_support import shared_case, shared_outputs

from hccnode.report import build_outputs


@pytest.fixture(scope="session")
def case(tmp_path_factory):
    return shared_case(tmp_path_factory)


@pytest.fixture(scope="session")
def first(tmp_path_factory):
    return shared_outputs(tmp_path_factory)


def uids(files) -> dict[str, tuple[str, str]]:
    out = {}
    for f in files.values() if isinstance(files, dict) else files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[f.name] = (ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return out


def test_rerun_of_the_same_analysis_gives_the_same_uids(case, first, tmp_path):
    again = build_outputs(out_dir=tmp_path, **case.kwargs())
    assert uids(again) == uids(first)
    assert len({sop for _, sop in uids(again).values()}) == 4  # one UID per object


def test_changed_lab_value_gives_a_new_sr_that_references_the_old_one(case, first, tmp_path):
    old_sr = pydicom.dcmread(first["sr"])
    hct = replace(case.labs[0], value=0.42)
    ms = [replace(m, lab=hct) if m.lab else m for m in case.measurements]
    files = build_outputs(out_dir=tmp_path, previous_sr=old_sr, **case.kwargs(labs_used=[hct], measurements=ms))
    new, old = uids(files), uids(first)
    for name in new:
        assert new[name][1] != old[name][1], name       # new instance
        assert new[name][0] == old[name][0], name       # same series: versions of one output
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    pred = sr.PredecessorDocumentsSequence[0]
    assert pred.StudyInstanceUID == old_sr.StudyInstanceUID
    ref = pred.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == old_sr.SeriesInstanceUID
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_sr.SOPInstanceUID


def test_rerun_given_its_own_sr_as_previous_does_not_reference_itself(case, first, tmp_path):
    build_outputs(out_dir=tmp_path, previous_sr=pydicom.dcmread(first["sr"]), **case.kwargs())
    assert "PredecessorDocumentsSequence" not in pydicom.dcmread(tmp_path / "sr.dcm")


def test_changed_roi_changes_the_uids(case, first, tmp_path):
    rois = list(case.rois)
    mask = rois[-1].mask.copy()
    z, y, x = (int(i[0]) for i in mask.nonzero())
    mask[z, y, x] = False
    rois[-1] = replace(rois[-1], mask=mask)
    files = build_outputs(out_dir=tmp_path, **case.kwargs(rois=rois))
    assert uids(files)["seg.dcm"][1] != uids(first)["seg.dcm"][1]


def test_outputs_sit_in_the_source_study(case, first):
    for f in first.values():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.StudyInstanceUID == case.reference[0].StudyInstanceUID
        assert ds.PatientID == case.reference[0].PatientID
    assert [f.name for f in first.values()] == ["seg.dcm", "ecv_map.dcm", "sr.dcm", "summary.dcm"]
