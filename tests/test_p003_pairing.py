"""Paper 003's time points (issue 16 point 1): one pairing rule for the pipeline and the priors
fetcher, and labs from the 14 days before treatment start (else before the baseline MRI), never
around the follow-up.

Expected values from paper 003, Materials and methods, Patients: baseline MRI "within 2 weeks prior
to treatment initiation", follow-up "at 8 weeks" -> 8 x 7 = 56 to 56 + 14 = 70 days apart; labs
"within 2 weeks prior to treatment" -> 14 x 24 = 336 h before the anchor."""

from __future__ import annotations

import datetime as dt
from datetime import datetime, timezone

import pytest

from hccnode.labs import catalog
from hccnode.labs.csvimport import parse_row
from hccnode.store.labs import store_results
from hccnode.models import p003_pairing
from hccnode.models.p003_pairing import Candidate, Window, lab_anchor, select_baseline
from hccnode.net import priors
from hccnode.pipeline.labs import Labs
from hccnode.store import studies
from hccnode.store.db import Store

CAT = catalog.load()
FOLLOWUP = dt.date(2026, 3, 9)
BASELINE_MRI = datetime(2026, 1, 10, 9, 0, tzinfo=timezone.utc)   # 58 days before the follow-up


def test_priors_and_pipeline_use_the_same_rule():
    assert priors.select_baseline is p003_pairing.select_baseline and priors.Window is p003_pairing.Window


@pytest.mark.parametrize("days, tolerance, paired, in_paper", [
    (56, 0, True, True), (70, 0, True, True),        # the paper's interval, both ends included
    (55, 0, False, False), (71, 0, False, False),    # one day outside
    (77, 7, True, False), (78, 7, False, False),     # inside / outside the site tolerance of 7 days
    (182, 7, False, False),                          # the paper's 6-month MRI is never a baseline
])
def test_a_pair_outside_the_window_is_not_paired(days, tolerance, paired, in_paper):
    c = Candidate("1.2.3", FOLLOWUP - dt.timedelta(days=days), "090000", ("MR",))
    sel = select_baseline([c], "1.2.9", FOLLOWUP, Window(tolerance))
    assert (sel.chosen is not None) == paired
    assert sel.verdicts[0].in_paper_window == in_paper
    assert f"{days} days before the follow-up" in sel.verdicts[0].reason


def test_lab_anchor_is_treatment_start_else_the_baseline_mri():
    start = datetime(2026, 1, 15, tzinfo=timezone.utc)
    assert lab_anchor(BASELINE_MRI, start) == (start, "treatment start (2026-01-15)")
    when, label = lab_anchor(BASELINE_MRI, None)
    assert when == BASELINE_MRI and label.startswith("the baseline MRI (2026-01-10;")
    assert lab_anchor(None, None)[0] is None


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    yield s
    s.close()


def _draw(store, when: str, neutrophils: float, lymphocytes: float) -> None:
    rows = []
    for test, value in (("NEU", neutrophils), ("LYM", lymphocytes)):
        rec = dict(patient_id="P1", test=test, value=f"{value:g}", unit="10*9/L", time=when, issuer="", status="F")
        result, errors = parse_row(rec, "t.csv", 2, CAT)
        assert not errors, errors
        rows.append(result)
    with store.tx():
        store_results(store, rows, source="csv", raw_id=None)


def test_nlr_for_paper_003_is_drawn_before_the_baseline_not_around_the_follow_up(store):
    followup_scan = datetime(2026, 3, 9, 9, 0, tzinfo=timezone.utc)
    _draw(store, "2026-03-08T08:00Z", 8.0, 1.0)    # a day before the follow-up: post-treatment, NLR 8
    _draw(store, "2026-01-07T08:00Z", 4.2, 2.1)    # 3 days before the baseline MRI: NLR 4.2 / 2.1 = 2.0
    _draw(store, "2025-12-20T08:00Z", 3.0, 1.0)    # 21 days before the baseline: outside 2 weeks
    labs = Labs(store, "1.2.9", "P1", None, followup_scan)
    labs.anchor("003", *lab_anchor(BASELINE_MRI, None))
    ref, why = labs.index("003", "nlr")
    assert why is None and ref.value == pytest.approx(2.0)
    assert "window: <= 336 h before the baseline MRI (2026-01-10;" in ref.source   # the reader sees what it counted from
    usage = store.query("SELECT scan_time FROM lab_usage WHERE paper = '003'")
    assert {u["scan_time"] for u in usage} == {BASELINE_MRI.timestamp()}   # requeue re-matches at the same anchor


def test_without_a_draw_in_the_two_weeks_the_reason_names_the_anchor(store):
    _draw(store, "2026-03-08T08:00Z", 8.0, 1.0)
    _draw(store, "2025-12-20T08:00Z", 3.0, 1.0)    # 21 days before the baseline MRI
    labs = Labs(store, "1.2.9", "P1", None, datetime(2026, 3, 9, 9, 0, tzinfo=timezone.utc))
    start = datetime(2026, 1, 12, tzinfo=timezone.utc)
    labs.anchor("003", *lab_anchor(BASELINE_MRI, start))
    ref, why = labs.index("003", "nlr")
    assert ref is None
    # nearest complete draw to 2026-01-12 00:00 is 2025-12-20 08:00: 22 days 16 h = 22.7 days before
    assert "22.7 days before treatment start (2026-01-12)" in why and "<= 336 h before treatment start" in why


def test_earlier_studies_come_from_the_store(store):
    with store.tx() as c:
        for uid, date, mod in (("1.1", "20260110", "MR"), ("1.2", "20251201", "CT"), ("1.9", "20260309", "MR")):
            c.execute("INSERT INTO studies (study_uid, patient_key, study_date, study_time, first_received,"
                      " last_received) VALUES (?,?,?,?,0,0)", (uid, "K1", date, "090000"))
            c.execute("INSERT INTO series (series_uid, study_uid, modality, first_received, last_received)"
                      " VALUES (?,?,?,0,0)", (uid + ".1", uid, mod))
    assert studies.study_date_time(store, "1.9") == ("20260309", "090000")
    rows = studies.earlier_studies(store, "K1", "1.9", "20260309", "090000", "MR")
    assert [r["study_uid"] for r in rows] == ["1.1"]


@pytest.mark.parametrize("start, problem", [
    (dt.date(2026, 1, 10), None),                     # on the baseline MRI's day
    (dt.date(2026, 1, 24), None),                     # 14 days after it: "within 2 weeks"
    (dt.date(2026, 1, 25), "it is 15 days after the baseline MRI of 2026-01-10 (paper 003 excludes"),
    (dt.date(2026, 1, 9), "it is before the baseline MRI of 2026-01-10"),
    (dt.date(2026, 3, 9), "it is not before the follow-up MRI of 2026-03-09"),
])
def test_a_treatment_start_that_contradicts_paper_003s_time_points_is_named(start, problem):
    """Exclusion (3): "an interval exceeding 2 weeks between baseline MRI and therapy initiation" (> 14 days);
    the follow-up is "at 8 weeks ... following therapy", so after the start."""
    got = p003_pairing.treatment_start_problem(start, BASELINE_MRI.date(), FOLLOWUP)
    if problem is None:
        assert got is None
    else:
        assert got.startswith(f"treatment start {start.isoformat()} does not fit paper 003's time points: ")
        assert problem in got
