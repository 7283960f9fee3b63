import math

import numpy as np
import pytest
import SimpleITK as sitk

from hccnode.imaging import ecv


def test_cect_tumor_ecv_hand_worked():
    # Tumor 40 -> 100 HU (dHU 60); aorta 40 -> 190 HU (dHU 150); HCT 0.40:
    # (1 - 0.40) x 60 / 150 x 100 = 0.6 x 0.4 x 100 = 24.0 %
    r = ecv.cect_ecv(40, 100, 40, 190, hct=0.40)
    assert r.delta_hu_tissue == 60 and r.delta_hu_aorta == 150
    assert r.ecv_percent == pytest.approx(24.0)
    assert r.missing_reason is None


def test_cect_liver_averages_three_roi_hus_then_ecv():
    # Paper 001 averages the three liver ROI HUs ("their average taken as the liver CT value"):
    # unenhanced 50, 54, 52 -> 52; equilibrium 100, 110, 105 -> 105; dHU 53.
    # HCT 42 % = 0.42; aorta dHU 150: 0.58 x 53 / 150 x 100 = 20.4933 %
    r = ecv.cect_ecv([50, 54, 52], [100, 110, 105], 40, 190, hct=ecv.hct_fraction(42, "%"))
    assert r.delta_hu_tissue == pytest.approx(53)
    assert r.ecv_percent == pytest.approx(20.49333, abs=1e-4)
    # With one aortic dHU the mean of per-ROI ECVs is the same number (ECV is linear in dHU).
    per_roi = [ecv.ecv_cect_percent(e - u, 150, 0.42) for u, e in zip([50, 54, 52], [100, 110, 105])]
    assert np.mean(per_roi) == pytest.approx(r.ecv_percent)


def test_cect_missing_hct_reports_enhancement_and_reason():
    r = ecv.cect_ecv(40, 100, 40, 190, hct=None, hct_missing_reason="no HCT within 7 days of the CT")
    assert r.ecv_percent is None
    assert r.missing_reason == "no HCT within 7 days of the CT"
    assert r.delta_hu_tissue == 60


def test_cect_non_enhancing_aorta_is_missing_not_a_number():
    r = ecv.cect_ecv(40, 100, 45, 44, hct=0.4)
    assert r.ecv_percent is None and "aortic enhancement" in r.missing_reason
    with pytest.raises(ValueError, match="aortic enhancement"):
        ecv.ecv_cect_percent(60, 0, 0.4)


def test_dect_ecv_hand_worked():
    # Lesion IC 2.0, 2.2, 2.4 mg/mL -> 2.2; aorta 5.5 mg/mL: NIC = 0.4; HCT 0.40: ECV = 0.4 x 0.6 = 0.24
    r = ecv.dect_ecv([2.0, 2.2, 2.4], 5.5, hct=0.40)
    assert r.nic == pytest.approx(0.4)
    assert r.ecv_fraction == pytest.approx(0.24)


def test_dect_missing_hct_keeps_nic():
    r = ecv.dect_ecv(2.2, 5.5, hct=None)
    assert r.nic == pytest.approx(0.4)
    assert r.ecv_fraction is None and "hematocrit" in r.missing_reason


@pytest.mark.parametrize(
    "value,unit,expected", [(0.42, "L/L", 0.42), (42, "%", 0.42), (0.38, "1", 0.38)]
)
def test_hct_units(value, unit, expected):
    assert ecv.hct_fraction(value, unit) == pytest.approx(expected)


@pytest.mark.parametrize("value,unit", [(42, "L/L"), (0.42, "g/dL"), (0, "%"), (120, "%")])
def test_hct_bad_units_refused(value, unit):
    with pytest.raises(ValueError):
        ecv.hct_fraction(value, unit)


def test_hct_percent_passed_as_fraction_is_refused():
    with pytest.raises(ValueError, match="fraction"):
        ecv.ecv_cect_percent(60, 150, 42)


def _synthetic_pair(noise_hu, seed=0):
    """Unenhanced / equilibrium volumes with a liver block (true ECV 28 %) and a tumor (40 %).
    HCT 0.40, aortic dHU 150 -> tissue dHU = ECV / (1 - HCT) x 150 / 100: liver 70 HU, tumor 100 HU."""
    rng = np.random.default_rng(seed)
    shape = (12, 40, 40)
    unenh = np.full(shape, -100.0)
    liver = np.zeros(shape, bool)
    liver[2:10, 5:35, 5:35] = True
    tumor = np.zeros(shape, bool)
    tumor[3:9, 12:24, 12:24] = True
    liver &= ~tumor
    unenh[liver] = 55
    unenh[tumor] = 40
    equil = unenh.copy()
    equil[liver] += 70
    equil[tumor] += 100
    unenh += rng.normal(0, noise_hu, shape)
    equil += rng.normal(0, noise_hu, shape)
    return unenh, equil, liver, tumor


@pytest.mark.parametrize("noise", [0.0, 10.0])
def test_ecv_map_recovers_truth(noise):
    unenh, equil, liver, tumor = _synthetic_pair(noise)
    spacing = (2.5, 1.0, 1.0)
    # One map per tissue mask: smoothing stays inside each mask, so tissues do not mix.
    m_liver = ecv.ecv_map_percent(unenh, equil, liver, 150.0, 0.40, spacing, sigma_mm=1.5)
    m_tumor = ecv.ecv_map_percent(unenh, equil, tumor, 150.0, 0.40, spacing, sigma_mm=1.5)
    assert np.isnan(m_liver[~liver]).all() and np.isnan(m_tumor[~tumor]).all()
    assert abs(np.nanmean(m_liver) - 28.0) <= 0.5
    assert abs(np.nanmean(m_tumor) - 40.0) <= 0.5
    # ROI-mean route (paper 001): same truth within 0.5 pp
    r = ecv.cect_ecv(unenh[tumor].mean(), equil[tumor].mean(), 0, 150, hct=0.40)
    assert abs(r.ecv_percent - 40.0) <= 0.5


def test_ecv_map_smoothing_stays_inside_mask():
    # Noise-free: smoothing restricted to the mask must not pull background (-100 HU) into
    # edge voxels, so every liver voxel away from the tumor keeps exactly 28 %.
    unenh, equil, liver, tumor = _synthetic_pair(0.0)
    m = ecv.ecv_map_percent(unenh, equil, liver, 150.0, 0.40, (2.5, 1.0, 1.0), sigma_mm=1.5)
    assert np.allclose(m[liver], 28.0, atol=1e-6)


def test_ecv_map_image_keeps_geometry_and_refuses_other_grid():
    unenh, equil, liver, tumor = _synthetic_pair(0.0)
    imgs = [sitk.GetImageFromArray(a.astype(np.float32)) for a in (unenh, equil)]
    mask = sitk.GetImageFromArray(liver.astype(np.uint8))
    for im in imgs + [mask]:
        im.SetSpacing((1.0, 1.0, 2.5))
        im.SetOrigin((10.0, -5.0, 3.0))
    out = ecv.ecv_map_image(imgs[0], imgs[1], mask, 150.0, 0.4)
    assert out.GetOrigin() == (10.0, -5.0, 3.0) and out.GetSpacing() == (1.0, 1.0, 2.5)
    assert math.isclose(float(np.nanmean(sitk.GetArrayFromImage(out))), 28.0, abs_tol=1e-4)
    imgs[1].SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="grid"):
        ecv.ecv_map_image(imgs[0], imgs[1], mask, 150.0, 0.4)


def test_ecv_map_boxed_from_boxed_phases_is_the_array_map():
    """The pipeline's route: phases resampled only within the ROIs' boxes (BoxedArray, NaN
    elsewhere) give the same map, held as the liver's box alone."""
    from hccnode.imaging.boxed import BoxedArray
    from hccnode.imaging.roi_stats import bounding_box

    unenh, equil, liver, tumor = _synthetic_pair(10.0)
    unenh, equil = unenh.astype(np.float32), equil.astype(np.float32)
    spacing = (2.5, 1.0, 1.0)
    want = ecv.ecv_map_percent(unenh, equil, liver, 150.0, 0.4, spacing)
    box = bounding_box(liver, 1)  # what Aligner.limit_to resamples for this ROI
    boxed_eq = BoxedArray(equil.shape, [(box, equil[box])])
    got = ecv.ecv_map_boxed(unenh, boxed_eq, liver, 150.0, 0.4, spacing)
    assert got.shape == liver.shape and len(got.pieces) == 1
    np.testing.assert_array_equal(np.asarray(got), want)


def test_ecv_map_image_is_the_array_map_voxel_for_voxel():
    # noisy pair, mask reaching the volume's edge (the smoothing box is clipped there)
    unenh, equil, liver, tumor = _synthetic_pair(10.0)
    mask = liver | tumor
    mask[:, :, :3] = True
    imgs = [sitk.GetImageFromArray(a.astype(np.float32)) for a in (unenh, equil, mask.astype(np.uint8))]
    for im in imgs:
        im.SetSpacing((1.0, 1.0, 2.5))
    want = ecv.ecv_map_percent(unenh, equil, mask, 150.0, 0.4, (2.5, 1.0, 1.0))
    got = sitk.GetArrayFromImage(ecv.ecv_map_image(*imgs, 150.0, 0.4))
    np.testing.assert_array_equal(np.isnan(got), ~mask)
    np.testing.assert_allclose(got[mask], want[mask], rtol=0, atol=1e-4)


def test_ecv_map_no_data_voxels_stay_nan_and_do_not_spread():
    # NaN (no data after registration) outside the mask and in one corner of the liver
    unenh, equil, liver, tumor = _synthetic_pair(0.0)
    equil[:, :, :5] = np.nan  # outside the liver block (columns 5..34)
    equil[2:4, 5:8, 5:8] = np.nan  # inside the liver
    m = ecv.ecv_map_percent(unenh, equil, liver, 150.0, 0.40, (2.5, 1.0, 1.0), sigma_mm=1.5)
    assert np.isnan(m[2:4, 5:8, 5:8]).all()
    rest = liver.copy()
    rest[2:4, 5:8, 5:8] = False
    assert np.allclose(m[rest], 28.0, atol=1e-6)
