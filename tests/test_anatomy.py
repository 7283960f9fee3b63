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
