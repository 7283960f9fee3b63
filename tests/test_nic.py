import numpy as np
import pytest

from hccnode.imaging import nic
from hccnode.imaging.roi_stats import roi_mean


def test_nic_ratio_hand_worked():
    # 2.2 mg/mL / 5.5 mg/mL = 0.4
    assert nic.nic_ratio(2.2, 5.5) == pytest.approx(0.4)


def test_nic_ap_is_percent_as_in_paper_002():
    # Paper 002 reports NIC-AP in %: 1.0 / 5.0 mg/mL -> 20 %
    assert nic.nic_ap_percent(1.0, 5.0) == pytest.approx(20.0)


def test_nic_refuses_zero_aorta():
    with pytest.raises(ValueError, match="aortic"):
        nic.nic_ratio(1.0, 0.0)


def test_nic_on_synthetic_iodine_map_within_2_percent():
    # Iodine map (mg/mL) with a lesion at 2.0 and an aorta at 6.0 plus noise 0.3 mg/mL: NIC truth 1/3.
    rng = np.random.default_rng(1)
    ic = rng.normal(0.5, 0.3, (8, 50, 50))
    lesion = np.zeros(ic.shape, bool)
    lesion[2:6, 10:25, 10:25] = True
    aorta = np.zeros(ic.shape, bool)
    aorta[2:6, 35:43, 35:43] = True
    ic[lesion] += 1.5
    ic[aorta] += 5.5
    value = nic.nic_ratio(roi_mean(ic, lesion), roi_mean(ic, aorta))
    assert abs(value - 1 / 3) / (1 / 3) <= 0.02
