import json

import pytest

import hccnode
from hccnode.imaging.measure import AUTOMATIC, READER, LabRef, Measurement, RoiRef, SeriesRef


def test_measurement_round_trips_through_json():
    m = Measurement(
        marker="ecv_tumor",
        value=24.0,
        unit="%",
        formula="paper001.ecv_cect",
        roi=RoiRef("tumor", READER, "1.2.3.4", label="Lesion 1"),
        series=(SeriesRef("1.2.3.10", "unenhanced"), SeriesRef("1.2.3.11", "equilibrium")),
        lab=LabRef("hematocrit", 0.40, "L/L", "2026-01-02T08:00:00", "csv:labs.csv:12"),
        registration={"ncc_before": 0.7, "ncc_after": 0.95, "ok": True},
    )
    d = json.loads(m.to_json())
    assert d["software_version"] == hccnode.__version__
    assert d["series"][1] == {"series_uid": "1.2.3.11", "phase": "equilibrium"}
    assert Measurement.from_dict(d) == m
    timed = Measurement.of("paper001.ecv_cect", "ecv_tumor", 24.0, series=(SeriesRef("1.2.3.11", "equilibrium", 150.0),),
                           notes=("aorta at the level of lesion 1",))
    d = json.loads(timed.to_json())
    assert d["series"] == [{"series_uid": "1.2.3.11", "phase": "equilibrium", "delay_s": 150.0}]
    assert Measurement.from_dict(d) == timed


def test_missing_value_needs_reason():
    with pytest.raises(ValueError, match="reason"):
        Measurement(marker="ecv_tumor", value=None, unit="%", formula="paper001.ecv_cect")
    m = Measurement.missing(
        "ecv_tumor", "%", "paper001.ecv_cect", reason="no hematocrit within 7 days",
        lab_missing_reason="no hematocrit within 7 days", roi=RoiRef("tumor", AUTOMATIC),
    )
    assert json.loads(m.to_json())["value"] is None


def test_non_finite_value_refused_and_bad_source_refused():
    with pytest.raises(ValueError, match="finite"):
        Measurement(marker="nic", value=float("nan"), unit="1", formula="paper000.nic")
    with pytest.raises(ValueError, match="source"):
        RoiRef("tumor", "guess")


def test_known_formula_fixes_the_unit():
    m = Measurement.of("paper002.nic_ap", "nic_ap_tumor", 17.42)
    assert m.unit == "%"
    with pytest.raises(ValueError, match="not '1'"):
        Measurement(marker="nic_ap_tumor", value=17.42, unit="1", formula="paper002.nic_ap")
    with pytest.raises(ValueError, match="unknown formula"):
        Measurement.of("paper009.x", "x", 1.0)
    dect = Measurement.of("paper000.ecv_dect", "ecv_tumor", None, reason="no hematocrit within 48 h")
    assert dect.unit == "1" and dect.value is None
