"""Phantom tissue model (enhancement.py) and analytic anatomy (anatomy.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from hccnode.phantom.anatomy import AORTA, Label, Motion, Tumor, VERTEBRA, label_slice, tumor_fits_liver
from hccnode.phantom.enhancement import (DEFAULT_TISSUES, blood_enhancement_hu, enhancement_hu, iodine_hu_per_mg_ml,
                                         plasma_enhancement_hu, tissue_table)


def test_iodine_coefficients_at_nist_table_points():
    # NIST SRD 126 (X-ray mass attenuation coefficients), iodine z53 and liquid water tables:
    # 22.10 / 0.2683 cm2/g at 40 keV, 7.579 / 0.2059 at 60 keV, 1.942 / 0.1707 at 100 keV
    assert iodine_hu_per_mg_ml(40) == pytest.approx(22.10 / 0.2683)
    assert iodine_hu_per_mg_ml(60) == pytest.approx(7.579 / 0.2059)
    assert iodine_hu_per_mg_ml(100) == pytest.approx(1.942 / 0.1707)
    # 70 keV lies between the 60 and 80 keV nodes (log-log): about 25 HU per mg/mL
    assert 7.579 / 0.2059 > iodine_hu_per_mg_ml(70) > 3.510 / 0.1837
    ks = [iodine_hu_per_mg_ml(k) for k in range(40, 101, 5)]
    assert all(a > b for a, b in zip(ks, ks[1:]))
    with pytest.raises(ValueError):
        iodine_hu_per_mg_ml(30)


def test_blood_curve_shape():
    assert blood_enhancement_hu(5) == 0.0
    arterial, portal, eq, late = (blood_enhancement_hu(t) for t in (35, 70, 180, 600))
    assert arterial > portal > eq > late > 0


@given(hct=st.floats(0.2, 0.6), delay=st.floats(120, 900), ecv=st.floats(0.05, 0.8))
def test_equilibrium_relation_holds_for_any_hct_delay_ecv(hct, delay, ecv):
    tumor = DEFAULT_TISSUES[Label.TUMOR].__class__("t", 40.0, ecv, 0.4, 0.7, 1.9, 1000.0)
    table = tissue_table(hct, 0.29, [tumor])
    d_t = enhancement_hu(table[Label.TUMOR], "equilibrium", delay, hct)
    d_a = enhancement_hu(table[Label.AORTA], "equilibrium", delay, hct)
    assert (1 - hct) * d_t / d_a == pytest.approx(ecv, rel=1e-9)
    assert d_a == pytest.approx((1 - hct) * plasma_enhancement_hu(delay, hct))


def test_nonequilibrium_terms_only_before_equilibrium():
    for t in DEFAULT_TISSUES.values():
        assert t.fill("equilibrium") == 1.0 and t.fill("unenhanced") == 0.0
    tumor, liver = DEFAULT_TISSUES[Label.TUMOR], DEFAULT_TISSUES[Label.LIVER]
    hct = 0.4
    assert enhancement_hu(tumor, "arterial", 35, hct) > enhancement_hu(liver, "arterial", 35, hct)


def test_labels_place_organs():
    c = np.arange(-190.0, 190.0, 2.0)
    x, y = np.meshgrid(c, c)
    lab = label_slice(x, y, 0.0, [Tumor(30.0)])
    assert x[lab == Label.LIVER].mean() < 0          # patient's right
    assert x[lab == Label.SPLEEN].mean() > 0
    assert x[lab == Label.AORTA].mean() > x[lab == Label.VERTEBRA].mean()     # left of the spine
    assert y[lab == Label.AORTA].mean() < y[lab == Label.VERTEBRA].mean()     # anterior of the spine
    es = lab == Label.ERECTOR_SPINAE
    assert (x[es] < 0).any() and (x[es] > 0).any() and y[es].mean() > y[lab == Label.VERTEBRA].mean()
    assert (lab == Label.TUMOR).sum() * 4.0 == pytest.approx(np.pi * 15.0**2, rel=0.05)
    assert lab[0, 0] == Label.AIR


def test_motion_moves_shapes():
    c = np.arange(-190.0, 190.0, 1.0)
    x, y = np.meshgrid(c, c)
    lab = label_slice(x, y, 0.0, [], motion=Motion((10.0, 0.0, 0.0)))
    assert x[lab == Label.AORTA].mean() == pytest.approx(AORTA["c"][0] + 10.0, abs=0.5)
    rot = label_slice(x, y, 0.0, [], motion=Motion((0, 0, 0), 90.0))
    # +90 degrees about z takes the vertebra (0, +52) to (-52, 0)
    assert x[rot == Label.VERTEBRA].mean() == pytest.approx(-VERTEBRA["c"][1], abs=1.0)


def test_tumor_fit_check():
    assert tumor_fits_liver(Tumor(40.0))
    assert not tumor_fits_liver(Tumor(200.0))
    assert Tumor(20.0).volume_ml == pytest.approx(4 / 3 * np.pi)  # r = 1 cm
