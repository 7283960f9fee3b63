import numpy as np
import pytest

from hccnode.imaging.spectral import lambda_hu


def test_lambda_hu_hand_worked():
    # (250 - 100) HU / (90 - 40) keV = 3.0 HU/keV
    assert lambda_hu(250.0, 100.0) == pytest.approx(3.0)


def test_lambda_hu_synthetic_roi_means_within_2_percent():
    rng = np.random.default_rng(2)
    hu40 = rng.normal(300.0, 15.0, 400)
    hu90 = rng.normal(110.0, 15.0, 400)
    truth = (300.0 - 110.0) / 50.0
    assert abs(lambda_hu(hu40.mean(), hu90.mean()) - truth) / truth <= 0.02


def test_lambda_hu_refuses_nan():
    with pytest.raises(ValueError):
        lambda_hu(float("nan"), 100.0)
