"""anatomy: body, spine, aorta and liver on synthetic axial CT volumes (LPS, HU)."""

import numpy as np
import pytest

from hccnode.imaging import anatomy as A
from synthetic_ct import PHASE_HU, abdomen, phase_volume

SP = (5.0, 3.8, 3.8)


@pytest.mark.parametrize("phase", list(PHASE_HU))
@pytest.mark.parametrize("shift", [(0.0, 0.0), (25.0, -15.0), (-20.0, 10.0)])
def test_aorta_found_in_every_phase_and_position(phase, shift):
    vol, (row, col) = phase_volume(phase, shift=shift, seed=7)
    a = A.find_aorta(vol, SP)
    assert a is not None
    _, cy, cx = a.centroid_index
    assert np.hypot((cy - row) * SP[1], (cx - col) * SP[2]) < 8.0      # mm from the true centre
    assert a.mean_hu == pytest.approx(PHASE_HU[phase]["aorta"], abs=15)


@pytest.mark.parametrize("phase", list(PHASE_HU))
def test_liver_sample_region_on_patient_right(phase):
    vol, _ = phase_volume(phase, seed=3)
    liver = A.find_liver(vol, SP)
    assert liver is not None
    assert liver.median_hu == pytest.approx(PHASE_HU[phase]["liver"], abs=5)
    assert liver.centroid_index[2] < vol.shape[2] / 2      # x < centre: patient right


def test_liver_not_found_on_the_left_when_mirrored():
    vol, _ = abdomen(liver_hu=110.0, aorta_hu=180.0, liver_right=False)
    liver = A.find_liver(vol, SP)
    assert liver is None or liver.median_hu < 90      # the spleen stand-in, not a 110 HU liver


def test_spine_is_the_posterior_midline_bone():
    vol, _ = abdomen()
    s = A.find_spine(vol, SP)
    assert s.found
    # vertebral body centre 55 mm posterior, 22 mm wide: anterior cortex about 36 mm posterior.
    centre = (vol.shape[1] - 1) / 2.0
    assert np.nanmedian(s.anterior_y) == pytest.approx(centre + 36 / SP[1], abs=2)
    assert np.nanmedian(s.x) == pytest.approx(centre, abs=2)


def test_bright_arterial_aorta_not_taken_for_the_spine():
    vol, _ = abdomen(aorta_hu=500.0, bone_hu=300.0)
    s = A.find_spine(vol, SP)
    centre = (vol.shape[1] - 1) / 2.0
    assert np.nanmedian(s.anterior_y) > centre + 20 / SP[1]


def test_to_lps_flips_and_transposes():
    vol = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    assert np.array_equal(A.to_lps(vol, (1, 0, 0), (0, 1, 0)), vol)
    assert np.array_equal(A.to_lps(vol, (-1, 0, 0), (0, -1, 0)), vol[:, ::-1, ::-1])   # prone-like
    assert np.array_equal(A.to_lps(vol, (0, 1, 0), (1, 0, 0)), np.swapaxes(vol, 1, 2))
    with pytest.raises(ValueError):
        A.to_lps(vol, (1, 0, 0), (0, 0, -1))          # coronal


def test_body_mask_excludes_air_and_fills_holes():
    vol, _ = abdomen(noise=0.0)
    vol[:, 40:45, 40:45] = -1000.0                     # gas inside the body
    body = A.body_mask(vol)
    assert body[:, 42, 42].all() and not body[:, 0, 0].any()


def test_air_fraction_separates_hu_images_from_maps():
    vol, _ = abdomen()
    assert A.air_fraction(vol) > 0.2
    assert A.air_fraction(np.zeros((2, 8, 8))) == 0.0


def test_missed_lumen_is_not_read_as_unenhanced_blood():
    # An obliquely cut aorta (too elongated for the round-lumen search) that is bright: the
    # position fallback must not steer away from it into soft tissue.
    vol, _ = abdomen(aorta_hu=300.0, aorta_r=(30.0, 9.0), aorta_xy=(15.0, 20.0))
    a = A.find_aorta(vol, SP)
    assert a is not None and "position" in a.method
    assert a.mean_hu > 90


def test_detached_posterior_arch_is_not_taken_for_the_vertebral_body():
    vol, _ = abdomen()
    n = vol.shape[1]
    c = (np.arange(n) - (n - 1) / 2.0) * SP[1]
    y, x = np.meshgrid(c, c, indexing="ij")
    gap = (np.abs(y - 78.0) < 4.0) & (np.abs(x) < 14.0)    # cut the arch off the body
    vol[:, gap] = 40.0
    arch = ((x / 16.0) ** 2 + ((y - 92.0) / 10.0) ** 2) <= 1.0   # a big arch (~500 mm^2)
    vol[:, arch] = 450.0
    s = A.find_spine(vol, SP)
    centre = (n - 1) / 2.0
    assert np.nanmedian(s.anterior_y) == pytest.approx(centre + 36 / SP[1], abs=2)


@pytest.mark.parametrize("row,col", [((1, 0, 0), (0, 1, 0)), ((-1, 0, 0), (0, -1, 0)), ((0, 1, 0), (1, 0, 0)),
                                     ((0, -1, 0), (1, 0, 0))])
def test_from_lps_undoes_to_lps(row, col):
    vol = np.random.default_rng(0).normal(size=(3, 4, 5))
    lps = A.to_lps(vol, row, col)
    assert np.array_equal(A.from_lps(lps, row, col), vol)


def test_image_lps_order_for_any_axis_order():
    import SimpleITK as sitk
    arr = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)   # [k, j, i]
    img = sitk.GetImageFromArray(arr)
    assert np.array_equal(A.image_lps_order(img).apply(arr), arr)
    # coronal planes: i along L, j along S (head up: -S), k along P
    img.SetDirection((1, 0, 0, 0, 0, 1, 0, -1, 0))
    order = A.image_lps_order(img)
    assert order.axes == (1, 0, 2) and not order.flip_y and not order.flip_x
    assert np.array_equal(order.invert(order.apply(arr)), arr)
    assert order.spacing((5.0, 2.0, 1.0)) == (2.0, 5.0, 1.0)


def _with_ellipse(vol, cx, cy, rx, ry, hu, n=96, px=SP[1]):
    c = (np.arange(n) - (n - 1) / 2.0) * px
    y, x = np.meshgrid(c, c, indexing="ij")
    vol[:, ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0] = hu
    return vol


def test_calcified_plaque_is_not_the_lumen():
    # A 150 HU portal-venous lumen with a dense (900 HU) plaque of 14 mm bulging from its wall:
    # brighter and round, but nested in the lumen; the ROI reads the blood.
    vol, (row, col) = abdomen(aorta_hu=150.0)
    _with_ellipse(vol, 20.0 + 11.0, 18.0, 7.0, 7.0, 900.0)
    lumen = A.aortic_lumen(vol, SP)
    assert len(lumen) == vol.shape[0]
    for k, lu in lumen.items():
        # the ROI centre is in the lumen, on the side away from the plaque
        assert np.hypot((lu.cy - row) * SP[1], (lu.cx - col) * SP[2]) < 9.0 and lu.cx <= col + 0.5
        assert vol[k][lu.mask].max() < 300.0           # calcium cut out of the lumen mask
    a = A.find_aorta(vol, SP)
    assert a.mean_hu == pytest.approx(150.0, abs=10)


def test_bone_shell_next_to_the_spine_is_not_the_aorta():
    # A round bone (700 HU cortex, 200 HU marrow) where the aorta usually is; the aorta itself is
    # displaced to the left. The shell is brighter and closer to the expected position.
    n, px = 192, 1.9
    sp = (5.0, px, px)
    vol, _ = abdomen(n=n, pixel_mm=px, aorta_hu=160.0, aorta_xy=(42.0, 12.0), aorta_r=11.0)
    _with_ellipse(vol, 10.0, 20.0, 10.0, 10.0, 700.0, n=n, px=px)
    _with_ellipse(vol, 10.0, 20.0, 6.5, 6.5, 200.0, n=n, px=px)
    row, col = 12.0 / px + (n - 1) / 2.0, 42.0 / px + (n - 1) / 2.0
    a = A.find_aorta(vol, sp)
    _, cy, cx = a.centroid_index
    assert np.hypot((cy - row) * px, (cx - col) * px) < 6.0
    assert a.mean_hu == pytest.approx(160.0, abs=12)


def test_small_liver_is_not_confused_with_the_erector_spinae():
    # A small liver (33 mm radius: 34 cm^2, near the smallest cross-section a liver has, see
    # hccnode.imaging.liver) and a right erector spinae that outsizes it, both ~55 HU.
    vol, _ = abdomen(liver_hu=58.0)
    _with_ellipse(vol, -60.0, -10.0, 75.0, 75.0, -100.0)       # remove the big liver
    _with_ellipse(vol, -60.0, -10.0, 33.0, 33.0, 58.0)
    _with_ellipse(vol, -45.0, 80.0, 48.0, 24.0, 52.0)           # big right erector spinae
    liver = A.find_liver(vol, SP)
    assert liver is not None
    n = vol.shape[1]
    assert liver.centroid_index[1] == pytest.approx(-10.0 / SP[1] + (n - 1) / 2.0, abs=3)
    assert liver.median_hu == pytest.approx(58.0, abs=4)


@pytest.mark.parametrize("px", [0.7, 1.5, 2.4, 3.8])
def test_disk_mask_area_is_the_closest_the_grid_allows(px):
    # 100 mm^2 (paper 001's ROI size): within 10% or one pixel of the target
    m = A.disk_mask((64, 64), 30, 30, np.sqrt(100.0 / np.pi), px, px)
    assert abs(m.sum() * px * px - 100.0) <= max(0.1 * 100.0, px * px)
    ys, xs = np.nonzero(m)
    assert abs(ys.mean() - 30) <= 0.5 and abs(xs.mean() - 30) <= 0.5
    assert not A.disk_mask((8, 8), -40, -40, 5.0, px, px).any()      # off the slice: empty, no error
