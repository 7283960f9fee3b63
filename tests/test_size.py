import numpy as np
import pytest

from hccnode.imaging import size


def _sphere(radius_mm, spacing, shape):
    zz, yy, xx = np.indices(shape, dtype=float)
    c = [(n - 1) / 2 for n in shape]
    return ((zz - c[0]) * spacing[0]) ** 2 + ((yy - c[1]) * spacing[1]) ** 2 + ((xx - c[2]) * spacing[2]) ** 2 <= radius_mm**2


def test_box_diameters_hand_worked():
    # 1 slice, 10 x 20 voxels of 0.5 x 0.5 mm: 5 x 10 mm rectangle, diagonal sqrt(25 + 100) = 11.18 mm
    m = np.zeros((3, 30, 30), bool)
    m[1, 5:15, 5:25] = True
    d, k = size.max_inplane_diameter_mm(m, (2.0, 0.5, 0.5))
    assert k == 1
    assert d == pytest.approx(np.hypot(5, 10), abs=0.5)
    # volume: 200 voxels x 0.5 mm3 = 100 mm3 = 0.1 mL
    assert size.volume_ml(m, (2.0, 0.5, 0.5)) == pytest.approx(0.1)


def test_single_voxel_is_one_voxel_wide():
    m = np.zeros((1, 3, 3), bool)
    m[0, 1, 1] = True
    assert size.max_inplane_diameter_mm(m, (1.0, 0.7, 0.7))[0] == pytest.approx(0.7)


def test_sphere_diameters_within_one_voxel():
    spacing = (2.5, 0.8, 0.8)
    m = _sphere(15.0, spacing, (17, 51, 51))
    d, k = size.max_inplane_diameter_mm(m, spacing)
    assert k == 8  # the central slice
    assert abs(d - 30.0) <= 0.8
    d3 = size.max_3d_diameter_mm(m, spacing)
    assert abs(d3 - 30.0) <= 2.5  # one voxel along z at worst
    # volume: 4/3 pi 15^3 = 14137 mm3 = 14.1 mL; voxelised within 5 %
    assert size.volume_ml(m, spacing) == pytest.approx(4 / 3 * np.pi * 15**3 / 1000, rel=0.05)


def test_empty_mask_and_bad_spacing():
    with pytest.raises(ValueError, match="empty"):
        size.max_inplane_diameter_mm(np.zeros((2, 4, 4), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        size.max_3d_diameter_mm(np.ones((2, 4, 4), bool), (1, 1))
