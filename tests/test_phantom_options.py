"""Phantom options a real node meets: determinism, misregistration, header faults, compression,
split sends, Enhanced CT multi-frame, the reader's SEG."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from hccnode import log
from hccnode.phantom import Motion, SpecError, StudySpec, generate
from phantom_helpers import dciodvfy, read_series, real_values, series_folder

TINY = dict(slices=4, matrix=48, noise_sd=5.0)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_same_bytes_different_seed_different_uids(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    spec = dict(kind="dect", vendor="standard", dect_phases=("arterial",), **TINY)
    ta = generate(StudySpec(seed=11, **spec), a).as_dict()
    generate(StudySpec(seed=11, **spec), b)
    tc = generate(StudySpec(seed=12, **spec), c).as_dict()
    assert _files(a) == _files(b)
    for rel in _files(a):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert ta["studies"][0]["study_instance_uid"] != tc["studies"][0]["study_instance_uid"]
    assert ta["patient"]["id"] != tc["patient"]["id"]
    f = ta["studies"][0]["series"][1]["folder"]
    pa = pydicom.dcmread(next((a / f).glob("*.dcm"))).pixel_array
    pc = pydicom.dcmread(next((c / f).glob("*.dcm"))).pixel_array
    assert not np.array_equal(pa, pc)
    for uid in ta["studies"][0]["series"][0]["sop_instance_uids"]:
        assert uid.startswith("2.25.") and len(uid) <= 64


def _bone_centroid(folder):
    ds = read_series(folder)[1]
    hu = real_values(ds)
    rows, cols = np.nonzero(hu > 200)
    ps = float(ds.PixelSpacing[0])
    return cols.mean() * ps, rows.mean() * ps


def test_misregistration_moves_the_anatomy(tmp_path):
    spec = StudySpec(seed=1, slices=4, matrix=96, noise_sd=0.0,
                     motion={"equilibrium": Motion((12.0, -8.0, 0.0), 0.0), "portal": Motion((0, 0, 0), 10.0)})
    truth = generate(spec, tmp_path).as_dict()
    x0, y0 = _bone_centroid(series_folder(tmp_path, truth, "ct_unenhanced"))
    x1, y1 = _bone_centroid(series_folder(tmp_path, truth, "ct_equilibrium"))
    assert x1 - x0 == pytest.approx(12.0, abs=1.5) and y1 - y0 == pytest.approx(-8.0, abs=1.5)
    x2, y2 = _bone_centroid(series_folder(tmp_path, truth, "ct_portal"))
    # rotation by +10 degrees about the z axis through the origin (image centre)
    ang0, ang2 = (np.degrees(np.arctan2(y - 190.0, x - 190.0)) for x, y in ((x0, y0), (x2, y2)))
    assert ang2 - ang0 == pytest.approx(10.0, abs=2.0)
    moved = [s for s in truth["studies"][0]["series"] if "motion" in s]
    assert {s["phase"] for s in moved} == {"equilibrium", "portal"}


def test_header_faults(tmp_path):
    spec = StudySpec(seed=2, header_faults=("no_description", "no_contrast", "no_times"), **TINY)
    truth = generate(spec, tmp_path).as_dict()
    for s in truth["studies"][0]["series"]:
        for ds in read_series(tmp_path / s["folder"]):
            assert "SeriesDescription" not in ds and "ContrastBolusAgent" not in ds
            assert "AcquisitionTime" not in ds and "SeriesTime" not in ds and ds.ContentTime == ""
        errors, warnings = dciodvfy(next((tmp_path / s["folder"]).glob("*.dcm")))
        assert not errors and not warnings
    assert truth["header_faults"] == ["no_description", "no_contrast", "no_times"]


def test_shuffled_times_are_recorded_in_truth(tmp_path):
    truth = generate(StudySpec(seed=2, header_faults=("shuffled_times",), **TINY), tmp_path).as_dict()
    art = next(s for s in truth["studies"][0]["series"] if s["kind"] == "ct_arterial")
    assert art["delay_s"] == 35.0 and art["header_delay_s"] == 180.0
    from datetime import datetime
    ds = read_series(tmp_path / art["folder"])[0]
    t = (datetime.strptime(ds.AcquisitionTime, "%H%M%S.%f") - datetime.strptime(ds.ContrastBolusStartTime, "%H%M%S.%f"))
    assert t.total_seconds() == pytest.approx(180.0)


@pytest.mark.parametrize("name,uid", [("rle", RLELossless), ("jpeg2000", JPEG2000Lossless), ("jpegls", JPEGLSLossless)])
def test_lossless_compression(tmp_path, name, uid):
    spec = dict(seed=3, kind="dect", vendor="ge", dect_phases=("arterial",), **TINY)
    plain = generate(StudySpec(**spec), tmp_path / "plain").as_dict()
    generate(StudySpec(compression=name, **spec), tmp_path / name)
    for s in plain["studies"][0]["series"]:
        a = read_series(tmp_path / "plain" / s["folder"])
        b = read_series(tmp_path / name / s["folder"])
        assert b[0].file_meta.TransferSyntaxUID == uid
        for da, db in zip(a, b):
            assert np.array_equal(da.pixel_array, db.pixel_array)
        errors, warnings = dciodvfy(next((tmp_path / name / s["folder"]).glob("*.dcm")))
        assert not errors and not warnings, (name, s["folder"], errors, warnings)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series_folder(tmp_path / name, plain, "ct_arterial"))))
    assert reader.Execute().GetSize() == (48, 48, 4)


def test_split_study_over_two_sends(tmp_path):
    truth = generate(StudySpec(seed=4, split=True, **TINY), tmp_path).as_dict()
    sends = {s["folder"].split("/")[0] for s in truth["studies"][0]["series"]}
    assert sends == {"send1", "send2"}
    uids = {pydicom.dcmread(p).StudyInstanceUID for p in tmp_path.rglob("*.dcm")}
    assert uids == {truth["studies"][0]["study_instance_uid"]}


def test_enhanced_ct_multiframe_matches_single_frame(tmp_path):
    spec = dict(seed=5, kind="dect", vendor="standard", dect_phases=("equilibrium",), **TINY)
    single = generate(StudySpec(**spec), tmp_path / "single").as_dict()
    multi = generate(StudySpec(enhanced=True, **spec), tmp_path / "multi").as_dict()
    for s, m in zip(single["studies"][0]["series"], multi["studies"][0]["series"]):
        files = list((tmp_path / "multi" / m["folder"]).glob("*.dcm"))
        frames = np.stack([d.pixel_array for d in read_series(tmp_path / "single" / s["folder"])])
        if s["kind"] == "dect_iodine":  # kept single-frame (see generate.py)
            assert len(files) == 4 and "enhanced" not in m
            continue
        assert len(files) == 1 and m["enhanced"] is True
        ds = pydicom.dcmread(files[0])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1" and int(ds.NumberOfFrames) == 4
        assert np.array_equal(ds.pixel_array, frames)
        z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
        assert z == sorted(z, reverse=True)
        errors, warnings = dciodvfy(files[0])
        assert not errors and not warnings, (m["folder"], errors, warnings)
        img = sitk.ReadImage(str(files[0]))
        assert img.GetSize() == (48, 48, 4)


@pytest.mark.parametrize("enhanced", [False, True])
def test_reader_seg(tmp_path, enhanced):
    spec = StudySpec(seed=6, slices=16, matrix=96, enhanced=enhanced, seg_phase="equilibrium", tumor_diameters_mm=(50.0,))
    truth = generate(spec, tmp_path).as_dict()
    seg_entry = next(s for s in truth["studies"][0]["series"] if s["kind"] == "seg")
    src = next(s for s in truth["studies"][0]["series"] if s["kind"] == "ct_equilibrium")
    path = tmp_path / seg_entry["folder"] / "SEG00001.dcm"
    errors, warnings = dciodvfy(path)
    assert not errors and not warnings
    import highdicom as hd
    seg = hd.seg.segread(path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src["series_instance_uid"]
    labels = {d.SegmentLabel for d in seg.SegmentSequence}
    assert labels == {"Tumor", "Liver", "Aorta", "Erector spinae"}
    tumor = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=src["sop_instance_uids"] if not enhanced else None,
        segment_numbers=[1], combine_segments=False) if not enhanced else \
        seg.get_pixels_by_source_frame(source_sop_instance_uid=src["sop_instance_uids"][0],
                                       source_frame_numbers=list(range(1, 17)), segment_numbers=[1])
    voxel_ml = (spec.pixel_mm ** 2 * spec.spacing) / 1000.0
    assert tumor.sum() * voxel_ml == pytest.approx(truth["studies"][0]["rois"]["tumor"]["volume_ml"], rel=0.15)


def test_spec_errors_name_the_field(tmp_path):
    with pytest.raises(SpecError, match="kind"):
        StudySpec(kind="pet")
    with pytest.raises(SpecError, match="tumor_diameters_mm"):
        generate(StudySpec(tumor_diameters_mm=(150.0,), **TINY), tmp_path)
    with pytest.raises(SpecError, match="delays"):
        StudySpec(arterial_delay_s=80.0)
    with pytest.raises(SpecError, match="motion"):
        StudySpec(motion={"delayed": Motion()})
    with pytest.raises(SpecError, match="vendor"):
        StudySpec(vendor="acme")


def test_no_patient_identity_in_logs(tmp_path, caplog):
    log.setup("DEBUG")
    log.LOGGER.propagate = True
    try:
        with caplog.at_level(logging.DEBUG, logger="hccnode"):
            truth = generate(StudySpec(seed=9, **TINY), tmp_path).as_dict()
    finally:
        log.LOGGER.propagate = False
    assert caplog.records, "generation should log an event"
    text = caplog.text
    for value in (truth["patient"]["name"], truth["patient"]["id"], truth["patient"]["birth_date"]):
        assert value not in text
