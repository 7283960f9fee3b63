from dataclasses import replace

import highdicom as hd
import numpy as np
import pydicom
import pytest
from report_support import dciodvfy, read_back_map, shared_case, shared_outputs

from hccnode.imaging.measure import AUTOMATIC, RoiRef
from hccnode.imaging.volumes import read_series
from hccnode.phantom import StudySpec, generate
from hccnode.report import Reference, ReportRoi, build_outputs


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
    assert len({sop for _, sop in uids(again).values()}) == 5  # one UID per object


def test_each_file_is_handed_on_when_written_the_map_first_and_the_summary_last(case, tmp_path):
    handed = []
    files = build_outputs(out_dir=tmp_path, on_written=lambda p: handed.append((p, p.exists(),
                                                                              (tmp_path / "summary.pdf").exists())),
                          **case.kwargs())
    assert sorted(p for p, _, _ in handed) == sorted(files)
    assert handed[0][0].name == "ecv_map.dcm"  # the largest, longest to send: sent while the rest is made
    assert all(exists for _, exists, _ in handed)
    assert handed[-1][0].name == "summary.dcm"
    assert not any(summary_made for p, _, summary_made in handed if p.name == "sr.dcm")  # the SR did not wait


def test_changed_lab_value_gives_a_new_sr_that_references_the_old_one(case, first, tmp_path):
    old_sr = pydicom.dcmread(first["sr"])
    hct = replace(case.labs[0], value=0.42)
    ms = [replace(m, lab=hct) if m.lab else m for m in case.measurements]
    files = build_outputs(out_dir=tmp_path, previous_sr=old_sr, **case.kwargs(labs_used=[hct], measurements=ms))
    new, old = uids(files), uids(first)
    for name in new:
        assert new[name][1] != old[name][1], name       # new instance
        assert new[name][0] == old[name][0], name       # same series: versions of one output
    assert dciodvfy(tmp_path / "sr.dcm") == ([], [])
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
    assert [f.name for f in first.values()] == ["seg.dcm", "ecv_map.dcm", "sr.dcm", "sr_results.dcm", "summary.dcm"]


def test_enhanced_multiframe_reference_keeps_frame_order(tmp_path):
    # Enhanced CT frames may run opposite to the volume's z order (here they do): SEG and map
    # frames must land on the frames the masks were drawn on.
    generate(StudySpec(kind="cect", matrix=32, slices=8, enhanced=True, noise_sd=0.0), tmp_path / "ph")
    folder = next((tmp_path / "ph").glob("*/0005_ct_equilibrium"))
    files = sorted(folder.glob("*.dcm"))
    vol = read_series(files)
    assert vol.frame_numbers != sorted(vol.frame_numbers)  # the case this test is about
    ref = Reference.from_volume(vol, [pydicom.dcmread(f) for f in files])
    shape = ref.shape
    liver = np.zeros(shape, bool)
    liver[1:4, 8:20, 6:18] = True
    liver[1, 8:12, 6:10] = False  # asymmetric along z
    ecv_map = np.where(liver, np.arange(np.prod(shape), dtype=np.float32).reshape(shape) % 50, np.nan)
    roi = ReportRoi(RoiRef("liver", AUTOMATIC, label="liver"), liver)
    out = build_outputs([], ref, [roi], [], [], [], tmp_path / "out", ecv_map=ecv_map.astype(np.float32))
    seg = hd.seg.segread(out[0])
    frames = seg.get_pixels_by_source_frame(source_sop_instance_uid=str(ref.datasets[0].SOPInstanceUID),
                                            source_frame_numbers=list(range(1, shape[0] + 1)), segment_numbers=[1],
                                            assert_missing_frames_are_empty=True)[..., 0].astype(bool)
    np.testing.assert_array_equal(frames[np.asarray(vol.frame_numbers) - 1], liver)
    positions = [vol.image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(shape[0])]
    got = read_back_map(out[1], positions)
    assert not np.isnan(got).any()  # a frame on every frame of the reference
    np.testing.assert_allclose(got[liver] * 100, ecv_map[liver], atol=1e-3)  # stored fraction x RWVM slope 100
    for f in out:
        assert dciodvfy(f)[0] == [], f.name


def test_changed_model_input_changes_the_sr_uid(case, first, tmp_path):
    results = [dict(r) for r in case.model_results]
    results[0]["inputs_used"] = {"liver_ecv_hu": {"value": 31.0, "unit": "%", "source": "clinical.csv row 2"}}
    files = build_outputs(out_dir=tmp_path, **case.kwargs(model_results=results))
    assert uids(files)["sr.dcm"][1] != uids(first)["sr.dcm"][1]
