import numpy as np
import pytest

from hccnode.imaging import sir


def test_t2_sir_hand_worked():
    assert sir.t2_sir(300.0, 200.0) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        sir.t2_sir(300.0, 0.0)


def test_adc_stats_hand_worked_three_roi_average():
    # ROI1 1000, 1100, 1200 x10^-6 mm2/s -> mean 1.1, max 1.2, min 1.0 (x10^-3)
    # ROI2  800,  900, 1300              -> mean 1.0, max 1.3, min 0.8
    # averaged: mean 1.05, max 1.25, min 0.90; heterogeneity (1.25 - 0.90) / 1.05 = 0.33333
    s = sir.adc_stats([np.array([1000, 1100, 1200]), np.array([800, 900, 1300])], unit="10*-6.mm2/s")
    assert (s.mean, s.max, s.min) == pytest.approx((1.05, 1.25, 0.90))
    assert s.heterogeneity == pytest.approx(0.333333, abs=1e-5)
    assert s.n_rois == 2 and s.n_voxels == 6


def test_adc_units_are_explicit():
    a = sir.adc_stats([np.array([0.0011])], unit="mm2/s")
    b = sir.adc_stats([np.array([1.1])], unit="10*-3.mm2/s")
    assert a.mean == pytest.approx(1.1) and b.mean == pytest.approx(1.1)
    with pytest.raises(ValueError, match="unit"):
        sir.adc_stats([np.array([1100])], unit="")


def test_synthetic_mri_markers_within_2_percent():
    # T2: tumor 600, erector spinae 250 (truth SIR 2.4), noise 10. ADC map in 10^-6 mm2/s:
    # tumor uniform 900..1300 -> truth mean 1.1, max ~1.3, min ~0.9 (x10^-3), heterogeneity ~0.3636.
    rng = np.random.default_rng(3)
    t2_tumor = rng.normal(600, 10, 500)
    t2_muscle = rng.normal(250, 10, 300)
    assert abs(sir.t2_sir(t2_tumor.mean(), t2_muscle.mean()) - 2.4) / 2.4 <= 0.02
    adc = rng.uniform(900, 1300, 2000)
    s = sir.adc_stats([adc], unit="10*-6.mm2/s")
    for got, truth in ((s.mean, 1.1), (s.max, 1.3), (s.min, 0.9), (s.heterogeneity, 0.4 / 1.1)):
        assert abs(got - truth) / truth <= 0.02


def test_change_baseline_to_follow_up():
    c = sir.change(2.0, 1.5)
    assert c.absolute == pytest.approx(-0.5) and c.percent == pytest.approx(-25.0)
    assert sir.change(0.0, 1.0).percent is None
