"""Markers measured from phantom DICOM (hccnode.phantom) against the phantom's truth:
volumes from files, the reader's SEG, registration of a misaligned phase, then the formulas."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from hccnode.imaging import ecv, nic, registration, rois, sir, size, spectral
from hccnode.imaging.roi_stats import roi_mean
from hccnode.imaging.volumes import read_series
from hccnode.phantom import Motion, StudySpec, generate


def _series(out: Path, truth, kind, study=0, **match):
    s = truth.series(kind, study=study, **match)[0]
    return read_series(sorted((out / s["folder"]).glob("*.dcm")))


def _seg_rois(out: Path, truth, reference):
    seg = truth.series("seg")[0]
    ds = pydicom.dcmread(next((out / seg["folder"]).glob("*.dcm")))
    found = rois.read_annotation(ds, reference)
    return {r.role: sitk.GetArrayFromImage(r.mask) > 0 for r in found.rois}


def _core(mask):
    """ROI inside the structure (the papers avoid edges): erode one voxel in-plane."""
    core = ndimage.binary_erosion(mask, structure=np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                                                             [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                             [[0, 0, 0], [0, 1, 0], [0, 0, 0]]]))
    assert core.sum() >= 10
    return core


def _cect_ecv(un, eq, masks, hct):
    aorta = _core(masks["aorta"])
    out = {}
    for role in ("tumor", "liver"):
        m = _core(masks[role])
        out[role] = ecv.cect_ecv(un[m].mean(), eq[m].mean(), un[aorta].mean(), eq[aorta].mean(), hct=hct).ecv_percent
    return out


@pytest.fixture(scope="module")
def cect(tmp_path_factory):
    out = tmp_path_factory.mktemp("cect")
    truth = generate(StudySpec(kind="cect", seed=3, slices=16, matrix=96, noise_sd=2.0, seg_phase="equilibrium",
                               motion={"unenhanced": Motion(shift_mm=(3.0, 4.0, 0.0), rotation_deg=3.0)}), out)
    return out, truth


def test_cect_ecv_after_registration_within_1pp(cect):
    out, truth = cect
    eq = _series(out, truth, "ct_equilibrium")
    un = _series(out, truth, "ct_unenhanced")
    masks = _seg_rois(out, truth, eq)
    reg = registration.register(eq.image, un.image)
    assert reg.quality.ok, reg.quality.problems
    got = _cect_ecv(sitk.GetArrayFromImage(reg.resampled), sitk.GetArrayFromImage(eq.image), masks, truth.data["hct"])
    for role in ("tumor", "liver"):
        assert abs(got[role] - 100 * truth.roi(role)["ecv"]) <= 1.0, (role, got[role])
    # unregistered, the misalignment shows (so the check above can fail)
    raw = _cect_ecv(sitk.GetArrayFromImage(
        sitk.Resample(un.image, eq.image, sitk.Transform(), sitk.sitkLinear, -1000.0)),
        sitk.GetArrayFromImage(eq.image), masks, truth.data["hct"])
    assert max(abs(raw[r] - 100 * truth.roi(r)["ecv"]) for r in ("tumor", "liver")) > 1.0


def test_cect_tumor_size_from_reader_seg(cect):
    out, truth = cect
    eq = _series(out, truth, "ct_equilibrium")
    tumor = _seg_rois(out, truth, eq)["tumor"]
    spacing = eq.image.GetSpacing()[::-1]
    d, _ = size.max_inplane_diameter_mm(tumor, spacing)
    assert abs(d - truth.roi("tumor")["diameter_mm"]) <= max(spacing[1:])
    assert size.volume_ml(tumor, spacing) == pytest.approx(truth.roi("tumor")["volume_ml"], rel=0.15)


@pytest.fixture(scope="module")
def dect(tmp_path_factory):
    out = tmp_path_factory.mktemp("dect")
    truth = generate(StudySpec(kind="dect", seed=4, slices=12, matrix=96, noise_sd=2.0, seg_phase="equilibrium"), out)
    return out, truth


def test_dect_nic_ecv_and_lambda_against_truth(dect):
    out, truth = dect
    eq = _series(out, truth, "ct_equilibrium")
    masks = {k: _core(v) for k, v in _seg_rois(out, truth, eq).items()}
    iodine = sitk.GetArrayFromImage(_series(out, truth, "dect_iodine", phase="equilibrium").image)
    r = ecv.dect_ecv(roi_mean(iodine, masks["tumor"]), roi_mean(iodine, masks["aorta"]), hct=truth.data["hct"])
    want_nic = truth.roi("tumor")["nic_equilibrium"]
    assert abs(r.nic - want_nic) / want_nic <= 0.02
    assert abs(100 * r.ecv_fraction - 100 * truth.roi("tumor")["ecv"]) <= 0.5
    # arterial phase NIC-AP (%) and lambda_HU (paper 002) on the same grid (no motion in this study)
    iodine_ap = sitk.GetArrayFromImage(_series(out, truth, "dect_iodine", phase="arterial").image)
    nic_ap = nic.nic_ap_percent(roi_mean(iodine_ap, masks["tumor"]), roi_mean(iodine_ap, masks["aorta"]))
    want = 100 * truth.roi("tumor")["nic_arterial"]
    assert abs(nic_ap - want) / want <= 0.02
    v40 = sitk.GetArrayFromImage(_series(out, truth, "dect_vmi", phase="arterial", kev=40.0).image)
    v90 = sitk.GetArrayFromImage(_series(out, truth, "dect_vmi", phase="arterial", kev=90.0).image)
    lam = spectral.lambda_hu(roi_mean(v40, masks["tumor"]), roi_mean(v90, masks["tumor"]))
    want = truth.roi("tumor")["phases"]["arterial"]["lambda_hu"]
    assert abs(lam - want) / want <= 0.02


@pytest.fixture(scope="module")
def mr(tmp_path_factory):
    out = tmp_path_factory.mktemp("mr")
    truth = generate(StudySpec(kind="mr", seed=5, slices=12, matrix=96, noise_sd=2.0, seg_phase="t2"), out)
    return out, truth


def test_mr_t2_sir_and_adc_against_truth(mr):
    out, truth = mr
    t2 = _series(out, truth, "mr_t2")
    masks = {k: _core(v) for k, v in _seg_rois(out, truth, t2).items()}
    t2a = sitk.GetArrayFromImage(t2.image)
    value = sir.t2_sir(roi_mean(t2a, masks["tumor"]), roi_mean(t2a, masks["muscle"]))
    want = truth.roi("tumor")["t2_ratio"]
    assert abs(value - want) / want <= 0.02
    adc = _series(out, truth, "mr_adc")
    adc_on_t2 = sitk.GetArrayFromImage(sitk.Resample(adc.image, t2.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0))
    stats = sir.adc_stats([adc_on_t2[masks["tumor"]]], unit="10*-6.mm2/s")
    want = truth.roi("tumor")["adc"] / 1000.0
    assert abs(stats.mean - want) / want <= 0.02
