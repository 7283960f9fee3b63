"""Phantom CT / DECT: the images carry the truth they claim, headers are right, files are valid."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from hccnode.phantom import StudySpec, generate
from phantom_helpers import dciodvfy, disk_mean, read_series, real_values, series_folder, slice_at

SMALL = dict(slices=12, matrix=96, noise_sd=5.0)


@pytest.fixture(scope="module")
def cect(tmp_path_factory):
    out = tmp_path_factory.mktemp("cect")
    truth = generate(StudySpec(kind="cect", vendor="siemens", seed=3, **SMALL), out)
    return out, truth.as_dict()


@pytest.fixture(scope="module")
def dect(tmp_path_factory):
    out = tmp_path_factory.mktemp("dect")
    truth = generate(StudySpec(kind="dect", vendor="standard", seed=4, dect_phases=("arterial", "equilibrium"),
                               **SMALL), out)
    return out, truth.as_dict()


def _roi(out, truth, kind, roi, radius=8.0, index=0, values=None, **match):
    series = read_series(series_folder(out, truth, kind, **match))
    c = truth["studies"][0]["rois"][roi]
    center = c["center_patient_mm"] if "center_patient_mm" in c else c["roi_centers_patient_mm"][index]
    ds = slice_at(series, center[2])
    return disk_mean(ds, center[:2], radius)


def test_equilibrium_ecv_from_images_matches_truth(cect):
    out, truth = cect
    hct = truth["hct"]
    m = {(roi, ph): _roi(out, truth, f"ct_{ph}", roi) for roi in ("tumor", "aorta") for ph in ("unenhanced", "equilibrium")}
    d_tumor = m["tumor", "equilibrium"] - m["tumor", "unenhanced"]
    d_aorta = m["aorta", "equilibrium"] - m["aorta", "unenhanced"]
    ecv = (1 - hct) * d_tumor / d_aorta  # paper 001 formula
    assert ecv == pytest.approx(0.35, abs=0.02)


def test_equilibrium_truth_satisfies_paper_001_exactly(cect):
    _, truth = cect
    rois, hct = truth["studies"][0]["rois"], truth["hct"]
    for name, ecv in (("tumor", 0.35), ("liver", 0.29)):
        d_t = rois[name]["phases"]["equilibrium"]["delta_hu"]
        d_a = rois["aorta"]["phases"]["equilibrium"]["delta_hu"]
        assert (1 - hct) * d_t / d_a == pytest.approx(ecv, rel=1e-12)
        assert rois[name]["ecv"] == ecv


def test_liver_rois_measure_liver_ecv(cect):
    out, truth = cect
    hct = truth["hct"]
    d = [(_roi(out, truth, "ct_equilibrium", "liver", index=i) - _roi(out, truth, "ct_unenhanced", "liver", index=i))
         for i in range(3)]
    d_a = _roi(out, truth, "ct_equilibrium", "aorta") - _roi(out, truth, "ct_unenhanced", "aorta")
    assert (1 - hct) * np.mean(d) / d_a == pytest.approx(0.29, abs=0.02)


def test_hcc_arterial_hyperenhancement_and_portal_washout(cect):
    out, truth = cect
    t_art, l_art = _roi(out, truth, "ct_arterial", "tumor"), _roi(out, truth, "ct_arterial", "liver")
    t_pv, l_pv = _roi(out, truth, "ct_portal", "tumor"), _roi(out, truth, "ct_portal", "liver")
    assert t_art > l_art + 20
    assert t_pv < l_pv


def test_anatomy_positions_from_pixels(cect):
    """Aorta anterior-left of the vertebral body; liver on the patient's right (image left)."""
    out, truth = cect
    art = read_series(series_folder(out, truth, "ct_arterial"))
    ds = art[len(art) // 2]
    hu = real_values(ds)
    rows, cols = np.mgrid[0:ds.Rows, 0:ds.Columns]
    x = float(ds.ImagePositionPatient[0]) + cols * float(ds.PixelSpacing[1])
    y = float(ds.ImagePositionPatient[1]) + rows * float(ds.PixelSpacing[0])
    aorta = hu > 250                     # only enhanced blood is this bright in the arterial phase
    unenh = real_values(slice_at(read_series(series_folder(out, truth, "ct_unenhanced")), float(ds.ImagePositionPatient[2])))
    bone = unenh > 180
    assert x[aorta].mean() > x[bone].mean() and y[aorta].mean() < y[bone].mean()
    liver_like = (unenh > 45) & (unenh < 70)
    assert x[liver_like].mean() < 0       # patient's right = -x = image left
    assert (cols[liver_like].mean()) < ds.Columns / 2


def test_contrast_tags_and_times_follow_the_delays(cect):
    out, truth = cect
    for phase, delay in (("unenhanced", None), ("arterial", 35.0), ("portal", 70.0), ("equilibrium", 180.0)):
        ds = read_series(series_folder(out, truth, f"ct_{phase}"))[0]
        if delay is None:
            assert "ContrastBolusAgent" not in ds and "ContrastBolusStartTime" not in ds
            continue
        assert ds.ContrastBolusAgent and ds.ContrastBolusRoute == "IV"
        t0 = datetime.strptime(ds.ContrastBolusStartTime, "%H%M%S.%f")
        t1 = datetime.strptime(ds.AcquisitionTime, "%H%M%S.%f")
        ts = datetime.strptime(ds.SeriesTime, "%H%M%S.%f")
        assert (t1 - t0).total_seconds() == pytest.approx(delay, abs=0.01)
        assert (ts - t0).total_seconds() == pytest.approx(delay, abs=0.01)
        assert ds.ContentTime >= ds.AcquisitionTime


def test_series_descriptions_and_truth_kinds(cect):
    out, truth = cect
    kinds = [s["kind"] for s in truth["studies"][0]["series"]]
    assert kinds == ["ct_unenhanced", "ct_arterial", "ct_portal", "ct_equilibrium"]
    for s in truth["studies"][0]["series"]:
        ds = read_series(out / s["folder"])[0]
        assert ds.SeriesInstanceUID == s["series_instance_uid"]
        assert int(ds.SeriesNumber) == s["series_number"]
        assert ds.SeriesDescription == s["description"]
        assert [d.SOPInstanceUID for d in read_series(out / s["folder"])] == s["sop_instance_uids"]
    assert json.loads((out / "truth.json").read_text())["studies"][0]["study_instance_uid"] == \
        truth["studies"][0]["study_instance_uid"]


def test_stored_integers_with_rescale(cect):
    out, truth = cect
    ds = read_series(series_folder(out, truth, "ct_unenhanced"))[0]
    assert ds.pixel_array.dtype.kind in "iu" and ds.BitsAllocated == 16
    assert float(ds.RescaleIntercept) == -1024.0 and float(ds.RescaleSlope) == 1.0
    assert real_values(ds).min() >= -1024.0


def test_every_cect_file_passes_dciodvfy(cect):
    out, _ = cect
    files = sorted(out.rglob("*.dcm"))
    assert files
    for f in files[::5]:
        errors, warnings = dciodvfy(f)
        assert not errors and not warnings, (f, errors, warnings)


def test_simpleitk_reads_series_as_volume(cect):
    out, truth = cect
    folder = series_folder(out, truth, "ct_equilibrium")
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    reader.SetFileNames(names)
    img = reader.Execute()
    assert img.GetSize() == (96, 96, 12)
    assert img.GetSpacing()[2] == pytest.approx(5.0)
    arr = sitk.GetArrayFromImage(img)
    assert arr.min() >= -1024 and arr.max() > 100  # HU after rescale


def test_dect_iodine_map_in_mg_per_ml(dect):
    out, truth = dect
    rois = truth["studies"][0]["rois"]
    for phase in ("arterial", "equilibrium"):
        t = _roi(out, truth, "dect_iodine", "tumor", phase=phase)
        a = _roi(out, truth, "dect_iodine", "aorta", phase=phase)
        assert t == pytest.approx(rois["tumor"]["phases"][phase]["iodine_mg_ml"], abs=0.25)
        assert a == pytest.approx(rois["aorta"]["phases"][phase]["iodine_mg_ml"], abs=0.25)
    # paper 000: ECV = NIC x (1 - HCT) in the equilibrium phase
    nic = rois["tumor"]["phases"]["equilibrium"]["iodine_mg_ml"] / rois["aorta"]["phases"]["equilibrium"]["iodine_mg_ml"]
    assert nic * (1 - truth["hct"]) == pytest.approx(0.35, rel=1e-12)


def test_dect_vmi_lambda_hu(dect):
    out, truth = dect
    hu40 = _roi(out, truth, "dect_vmi", "tumor", phase="arterial", kev=40.0)
    hu90 = _roi(out, truth, "dect_vmi", "tumor", phase="arterial", kev=90.0)
    lam = truth["studies"][0]["rois"]["tumor"]["phases"]["arterial"]["lambda_hu"]
    assert (hu40 - hu90) / 50.0 == pytest.approx(lam, abs=0.15)
    assert lam > 0


def test_dect_vnc_equals_unenhanced(dect):
    out, truth = dect
    vnc = _roi(out, truth, "dect_vnc", "liver", phase="equilibrium")
    plain = _roi(out, truth, "ct_unenhanced", "liver")
    assert vnc == pytest.approx(plain, abs=2.0)


def test_dect_standard_multienergy_tags(dect):
    out, truth = dect
    vmi = read_series(series_folder(out, truth, "dect_vmi", phase="arterial", kev=40.0))[0]
    assert vmi.MultienergyCTAcquisition == "YES" and vmi.ImageType[3] == "VMI"
    assert vmi.MultienergyCTCharacteristicsSequence[0].MonoenergeticEnergyEquivalent == 40.0
    iod = read_series(series_folder(out, truth, "dect_iodine", phase="arterial"))[0]
    assert iod.ImageType[3] == "MAT_SPECIFIC" and iod.RescaleType == "MGML"
    rwvm = iod.RealWorldValueMappingSequence[0]
    assert rwvm.MeasurementUnitsCodeSequence[0].CodeValue == "mg/ml"      # CID 301 spelling
    assert iod.MultienergyCTProcessingSequence[0].DecompositionMaterialSequence[0].MaterialCodeSequence[0].CodeValue \
        == "44588005"                                                        # SCT Iodine, CID 300
    assert "ContrastBolusAgent" in iod


def test_every_dect_series_passes_dciodvfy(dect):
    out, truth = dect
    for s in truth["studies"][0]["series"]:
        errors, warnings = dciodvfy(next((out / s["folder"]).glob("*.dcm")))
        assert not errors and not warnings, (s["folder"], errors, warnings)


@pytest.mark.parametrize("vendor", ["siemens", "ge", "philips", "canon"])
def test_vendor_styles_label_dect_series(tmp_path, vendor):
    truth = generate(StudySpec(kind="dect", vendor=vendor, seed=5, slices=2, matrix=32, dect_phases=("portal",)),
                     tmp_path).as_dict()
    descs = {s["kind"] + str(s.get("kev", "")): s["description"] for s in truth["studies"][0]["series"]}
    assert "40" in descs["dect_vmi40.0"] and "90" in descs["dect_vmi90.0"]
    for s in truth["studies"][0]["series"]:
        f = next((tmp_path / s["folder"]).glob("*.dcm"))
        ds = pydicom.dcmread(f)
        assert ds.Manufacturer == truth["manufacturer"]
        errors, warnings = dciodvfy(f)
        assert not errors and not warnings, (vendor, s["folder"], errors, warnings)
