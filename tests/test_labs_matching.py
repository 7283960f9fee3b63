"""Matching lab results to a scan time: windows (in, out, tie, side), issuer, precision, panels."""

from datetime import datetime, timezone

import pytest

from hccnode.labs import catalog
from hccnode.labs.catalog import Window
from hccnode.labs.csvimport import parse_row
from hccnode.labs.matching import CENSORED, MATCHED, MISSING, match_lab, match_panel
from hccnode.store.labs import store_results
from hccnode.store.db import Store

CAT = catalog.load()
SCAN = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)
W48 = CAT.window("000", "hct")  # <= 48 h before the scan
W1W = CAT.window("001", "hct")  # < 168 h either side


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    yield s
    s.close()


def put(store, time, value="42", unit="%", test="HCT", pid="P1", issuer="", status="F"):
    rec = dict(patient_id=pid, test=test, value=value, unit=unit, time=time, issuer=issuer, status=status)
    result, errors = parse_row(rec, "t.csv", 2, CAT)
    assert not errors, errors
    with store.tx():
        store_results(store, [result], source="csv", raw_id=None)
    return store.query("SELECT max(id) AS id FROM labs")[0]["id"]


def test_closest_inside_window_wins(store):
    put(store, "2024-03-09T12:00Z", "40")  # 24 h before
    best = put(store, "2024-03-10T06:00Z", "42")  # 6 h before
    put(store, "2024-03-10T13:00Z", "44")  # 1 h after: outside a "before" window
    m = match_lab(store, "P1", None, SCAN, "hct", W48)
    assert (m.status, m.value, m.lab_id, m.gap_hours) == (MATCHED, 0.42, best, -6.0)
    assert "closest of 2 results" in m.reason and not m.flagged
    m1 = match_lab(store, "P1", None, SCAN, "hct", W1W)
    assert (m1.value, m1.gap_hours) == (0.44, 1.0)


def test_out_of_window_is_missing_with_the_reason(store):
    put(store, "2024-03-01T12:00Z")  # 9 days before
    m = match_lab(store, "P1", None, SCAN, "hct", W48)
    assert m.status == MISSING and m.value is None
    assert m.reason == "nearest final hct is 9.0 days before the scan; window <= 48 h before the scan"


def test_window_edges_le_and_lt(store):
    put(store, "2024-03-08T12:00Z")  # exactly 48 h before
    assert match_lab(store, "P1", None, SCAN, "hct", W48).status == MATCHED
    put(store, "2024-03-17T12:00Z", pid="P2")  # exactly one week after
    assert match_lab(store, "P2", None, SCAN, "hct", W1W).status == MISSING  # paper 001: "less than 1 week"


def test_tie_prefers_the_result_drawn_before_the_scan(store):
    after = put(store, "2024-03-10T15:00Z", "44")
    before = put(store, "2024-03-10T09:00Z", "40")
    m = match_lab(store, "P1", None, SCAN, "hct", W1W)
    assert m.lab_id == before and m.lab_id != after and "tie" in m.reason


def test_tie_at_same_time_and_side_prefers_the_one_received_last(store):
    put(store, "2024-03-10T09:00Z", "40", test="4544-3", issuer="A")
    last = put(store, "2024-03-10T09:00Z", "41", test="4544-3", issuer="B")
    assert match_lab(store, "P1", None, SCAN, "hct", W1W).lab_id == last


def test_issuer_must_agree_when_both_carry_one(store):
    put(store, "2024-03-10T09:00Z", issuer="HOSP_A")
    assert match_lab(store, "P1", "HOSP_B", SCAN, "hct", W48).status == MISSING
    assert match_lab(store, "P1", "HOSP_A", SCAN, "hct", W48).status == MATCHED
    assert match_lab(store, "P1", None, SCAN, "hct", W48).status == MATCHED  # study without issuer
    put(store, "2024-03-10T09:00Z", pid="P9")  # lab without issuer
    assert match_lab(store, "P9", "HOSP_B", SCAN, "hct", W48).status == MATCHED
    assert match_lab(store, "P2", None, SCAN, "hct", W48).reason == "no hct result for this patient"


def test_date_only_result_counts_at_the_far_end_of_its_day(store):
    put(store, "2024-03-10")  # the scan day: may have been drawn after the scan
    m = match_lab(store, "P1", None, SCAN, "hct", W48)
    assert m.status == MISSING
    put(store, "2024-03-08", pid="P2")  # from 64 h to 40 h before: not surely within 48 h
    assert match_lab(store, "P2", None, SCAN, "hct", W48).status == MISSING
    put(store, "2024-03-09", pid="P3")  # 36 h to 12 h before
    m3 = match_lab(store, "P3", None, SCAN, "hct", W48)
    assert (m3.status, m3.gap_hours) == (MATCHED, -36.0)


def test_censored_value_is_matched_without_a_number(store):
    put(store, "2024-03-10T09:00Z", "<5", "mg/L", test="CRP")
    m = match_lab(store, "P1", None, SCAN, "crp", CAT.window("000", "crp"))
    assert (m.status, m.value, m.value_text) == (CENSORED, None, "<5")
    assert m.flagged and "site default" in m.reason


def test_preliminary_and_withdrawn_results_are_not_used(store):
    put(store, "2024-03-10T09:00Z", status="P")
    m = match_lab(store, "P1", None, SCAN, "hct", W48)
    assert m.status == MISSING and "only preliminary" in m.reason
    put(store, "2024-03-10T08:00Z", pid="P2")
    put(store, "2024-03-10T08:00Z", "", pid="P2", status="X")
    assert match_lab(store, "P2", None, SCAN, "hct", W48).status == MISSING


def test_panel_uses_one_draw_for_all_tests(store):
    for test, value in (("neutrophils", "4"), ("lymphocytes", "2")):
        put(store, "2024-03-10T08:00Z", value, "10*9/L", test=test)
    put(store, "2024-03-10T11:00Z", "5", "10*9/L", test="neutrophils")  # closer, but no lymphocytes with it
    w = Window("003", "neutrophils", 48, "either", "le", False)
    got = match_panel(store, "P1", None, SCAN, ["neutrophils", "lymphocytes"], w)
    assert {t: (m.status, m.value) for t, m in got.items()} == {"neutrophils": (MATCHED, 4.0), "lymphocytes": (MATCHED, 2.0)}
    none = match_panel(store, "P1", None, SCAN, ["neutrophils", "monocytes"], w)
    assert {m.status for m in none.values()} == {MISSING}
    assert "no draw with numeric values of all of neutrophils, monocytes" in none["monocytes"].reason
