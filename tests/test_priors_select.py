"""Choosing the baseline among C-FIND matches (hccnode.net.priors.select_baseline): pure, no network."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from hccnode.net.priors import (
    Candidate,
    Window,
    candidate_from_match,
    find_identifier,
    parse_date,
    select_baseline,
)

FOLLOWUP = "1.2.3.9"
DAY = dt.date(2026, 3, 9)


def cand(uid: str, days_before: int | None, modalities=("MR",), instances: int | None = 10, **kw) -> Candidate:
    date = None if days_before is None else DAY - dt.timedelta(days=days_before)
    return Candidate(uid, date, kw.pop("time", "090000"), tuple(modalities), "", instances, **kw)


def test_window_is_paper_003s_interval_widened_by_the_site_tolerance():
    # Paper 003, Patients: baseline within 2 weeks before treatment, follow-up 8 weeks after it.
    w = Window(0)
    assert (w.min_days, w.max_days) == (56, 70)
    w = Window(7)
    assert (w.min_days, w.max_days) == (49, 77)
    assert "not published" in w.describe()
    assert Window(100).min_days == 1       # never the follow-up's own day


def test_baseline_eight_weeks_earlier_is_chosen_and_every_candidate_has_a_reason():
    cands = [cand(FOLLOWUP, 0), cand("1.1", 56), cand("1.2", 140), cand("1.3", 20), cand("1.4", 60, ("CT",)),
             cand("1.5", 63, same_patient=False), cand("1.6", None)]
    sel = select_baseline(cands, FOLLOWUP, DAY, Window(7))
    assert sel.chosen.study_uid == "1.1"
    reasons = {v.candidate.study_uid: v.reason for v in sel.verdicts}
    assert reasons[FOLLOWUP] == "the follow-up itself"
    assert reasons["1.1"].startswith("chosen: 56 days before the follow-up: within paper 003's 56-70 days")
    assert "more than the window's 77" in reasons["1.2"]
    assert "fewer than the window's 49" in reasons["1.3"]
    assert "no MR series (modalities: CT)" in reasons["1.4"]
    assert "another patient" in reasons["1.5"]
    assert "no usable Study Date" in reasons["1.6"]
    assert [v.candidate for v in sel.verdicts] == cands


def test_none_in_window_gives_no_choice_and_says_why():
    sel = select_baseline([cand("1.1", 28), cand(FOLLOWUP, 0)], FOLLOWUP, DAY, Window(7))
    assert sel.chosen is None
    assert "no MR study of this patient 49-77 days before the follow-up" in sel.reason
    assert "PACS has no other" in select_baseline([], FOLLOWUP, DAY, Window(7)).reason


def test_tolerance_only_match_is_flagged_as_unpublished_and_loses_to_a_paper_window_match():
    only_margin = select_baseline([cand("1.1", 50)], FOLLOWUP, DAY, Window(7))
    assert only_margin.chosen.study_uid == "1.1"
    assert "site tolerance" in only_margin.reason and "does not publish" in only_margin.reason
    assert not only_margin.verdicts[0].in_paper_window
    both = select_baseline([cand("1.1", 50), cand("1.2", 70)], FOLLOWUP, DAY, Window(7))
    assert both.chosen.study_uid == "1.2"
    assert "eligible, but 1.2 is preferred" in both.verdicts[0].reason


def test_among_paper_window_matches_the_latest_scan_before_treatment_wins():
    sel = select_baseline([cand("1.1", 69), cand("1.2", 58), cand("1.3", 62)], FOLLOWUP, DAY, Window(7))
    assert sel.chosen.study_uid == "1.2"
    same_day = select_baseline([cand("1.1", 60, time="080000"), cand("1.2", 60, time="143000")],
                               FOLLOWUP, DAY, Window(0))
    assert same_day.chosen.study_uid == "1.2"


def test_unknown_modalities_and_counts_are_allowed_but_an_empty_study_is_not():
    sel = select_baseline([cand("1.1", 60, (), None)], FOLLOWUP, DAY, Window(0))
    assert sel.chosen.study_uid == "1.1"
    sel = select_baseline([cand("1.1", 60, instances=0)], FOLLOWUP, DAY, Window(0))
    assert sel.chosen is None and "no instances" in sel.verdicts[0].reason


def test_cfind_identifier_and_match_conversion_keep_patient_identity_out_of_candidates():
    ident = find_identifier("PID123", None, DAY, Window(7))
    assert ident.QueryRetrieveLevel == "STUDY" and ident.ModalitiesInStudy == "MR"
    assert ident.StudyDate == "20251221-20260309"           # 78 days back: the window's maximum + 1
    m = Dataset()
    m.PatientID, m.StudyInstanceUID, m.StudyDate, m.ModalitiesInStudy = "PID123", "1.1", "20260112", ["MR", "SR"]
    m.NumberOfStudyRelatedInstances = "16"
    c = candidate_from_match(m, "PID123", None)
    assert c == Candidate("1.1", dt.date(2026, 1, 12), "", ("MR", "SR"), "", 16, True)
    assert "PID123" not in repr(c)
    m.PatientID = "OTHER"
    assert candidate_from_match(m, "PID123", None).same_patient is False
    m.PatientID, m.IssuerOfPatientID = "PID123", "HOSP_B"
    assert candidate_from_match(m, "PID123", "HOSP_A").same_patient is False
    assert candidate_from_match(m, "PID123", None).same_patient is True


def test_parse_date():
    assert parse_date("20260112") == dt.date(2026, 1, 12)
    assert parse_date("2026.01.12") == dt.date(2026, 1, 12)
    assert parse_date("") is None and parse_date("20261340") is None and parse_date(None) is None


# -- properties ------------------------------------------------------------------------------

candidates = st.lists(
    st.builds(
        lambda i, days, mods, n, same, hh: cand(f"1.{i}", days, mods, n, same_patient=same, time=f"{hh:02d}0000"),
        st.integers(0, 10_000), st.one_of(st.none(), st.integers(-30, 200)),
        st.sampled_from([(), ("MR",), ("CT",), ("MR", "SR"), ("SR",)]),
        st.one_of(st.none(), st.integers(0, 50)), st.booleans(), st.integers(0, 23)),
    max_size=12, unique_by=lambda c: c.study_uid)


def eligible(c: Candidate, w: Window) -> bool:
    """The rule as the docstring states it, written out independently of the implementation."""
    if c.study_uid == FOLLOWUP or not c.same_patient or c.study_date is None or c.instances == 0:
        return False
    if c.modalities and "MR" not in c.modalities:
        return False
    return w.min_days <= (DAY - c.study_date).days <= w.max_days


@settings(max_examples=200, deadline=None)
@given(candidates, st.floats(0, 30), st.randoms(use_true_random=False))
def test_choice_is_eligible_order_free_and_prefers_the_paper_window(cands, tol, rnd):
    w = Window(tol)
    sel = select_baseline(cands, FOLLOWUP, DAY, w)
    assert len(sel.verdicts) == len(cands)
    assert [v.eligible for v in sel.verdicts] == [eligible(c, w) for c in cands]
    if sel.chosen is None:
        assert not any(eligible(c, w) for c in cands)
    else:
        assert sel.chosen in cands and eligible(sel.chosen, w)
        days = (DAY - sel.chosen.study_date).days
        in_paper = [c for c in cands if eligible(c, w) and 56 <= (DAY - c.study_date).days <= 70]
        if in_paper:
            assert 56 <= days <= 70
            assert days == min((DAY - c.study_date).days for c in in_paper)
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    assert select_baseline(shuffled, FOLLOWUP, DAY, w).chosen == sel.chosen
    # Adding a study outside the window never changes the choice.
    far = cand("9.9", int(w.max_days) + 1 + random.Random(len(cands)).randint(0, 100))
    assert select_baseline(cands + [far], FOLLOWUP, DAY, w).chosen == sel.chosen


def test_priors_config_is_checked_and_the_pacs_defaults_to_the_forward_destination():
    import pytest

    from hccnode import config
    from hccnode.net.priors import pacs_destination

    with pytest.raises(config.ConfigError, match="priors.retrieve"):
        config.from_dict({"priors": {"retrieve": "push"}})
    with pytest.raises(config.ConfigError, match="priors.pacs"):
        config.from_dict({"priors": {"pacs": "nonsense"}})
    with pytest.raises(config.ConfigError, match="priors.pacs: required"):
        config.from_dict({"priors": {"enabled": True}})
    with pytest.raises(config.ConfigError, match="priors.tolerance_days"):
        config.from_dict({"priors": {"tolerance_days": -1}})
    cfg = config.from_dict({"priors": {"enabled": True}, "forward": {"destinations": ["PACS@10.1.2.3:104"]}})
    assert str(pacs_destination(cfg)) == "PACS@10.1.2.3:104"
    cfg = config.from_dict({"priors": {"pacs": "QR@10.1.2.4:11112"}, "forward": {"destinations": ["PACS@10.1.2.3:104"]}})
    assert str(pacs_destination(cfg)) == "QR@10.1.2.4:11112"
    assert pacs_destination(config.Config()) is None
