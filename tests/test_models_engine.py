"""Engine: input checks give clear reasons; outputs follow the papers' formulas; what cannot
be computed is withheld with the reason."""

import math
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from hccnode import RESEARCH_USE
from hccnode.models.card import load_cards
from hccnode.models.engine import EVALUATED, NOT_EVALUATED, InputValue, evaluate, evaluate_all

CARDS = load_cards([Path(__file__).resolve().parents[1] / "plugins" / "models"])


def card(cid):
    return CARDS[f"{cid}@1.0.0"]


def iv(value, unit, source="test"):
    return InputValue(value, unit, source)


P002 = {"tumor_size": iv(42.4, "mm", "marker size, SR 1.2.3"), "nic_ap": iv(17.42, "%", "marker NIC-AP"),
        "ps": iv(17.38, "mL/min/100 g", "clinical.csv line 2")}


def expit(x):
    return 1 / (1 + math.exp(-x))


def test_p002_probability_is_the_papers_formula():
    r = evaluate(card("p002-nomogram"), P002)
    assert r["status"] == EVALUATED
    lp = -7.705 + 0.043 * 42.4 + 0.143 * 17.42 + 0.072 * 17.38  # Table 5
    assert r["outputs"]["linear_predictor"] == pytest.approx(lp)
    assert r["outputs"]["probability"] == pytest.approx(expit(lp))
    assert r["card_id"] == "p002-nomogram" and r["card_version"] == "1.0.0"
    assert r["inputs_used"]["ps"] == {"value": 17.38, "unit": "mL/min/100 g", "source": "clinical.csv line 2"}
    assert r["research_use"] == RESEARCH_USE
    assert any("unpublished" in x for x in r["limitations"])


def test_wrong_unit_names_input_and_expected_unit():
    r = evaluate(card("p002-nomogram"), {**P002, "tumor_size": iv(4.24, "cm")})
    assert r["status"] == NOT_EVALUATED and r["outputs"] == {}
    (reason,) = r["reasons"]
    assert "'tumor_size'" in reason and "'cm'" in reason and "expects 'mm'" in reason


def test_missing_input_names_input_unit_and_source():
    inputs = dict(P002)
    del inputs["ps"]
    r = evaluate(card("p002-nomogram"), inputs)
    assert r["status"] == NOT_EVALUATED
    assert r["reasons"] == ["input 'ps' (permeability surface area product) is missing; expected mL/min/100 g from clinical"]


def test_out_of_range_names_range_and_hints_at_percent():
    r = evaluate(card("p000-ecv-cutoff"), {"tumor_ecv_iodine": iv(38.0, "1")})
    (reason,) = r["reasons"]
    assert "outside the card's range 0 to 1" in reason and "looks like a percentage" in reason
    r = evaluate(card("p001-tumor-ecv"), {"tumor_ecv_hu": iv(0.38, "%")})
    assert r["status"] == EVALUATED  # 0.38 % is in range; a fraction slip is flagged only when impossible
    r = evaluate(card("p001-tumor-ecv"), {"tumor_ecv_hu": iv(-3, "%")})
    assert "outside" in r["reasons"][0]


def test_every_problem_is_reported_not_just_the_first():
    r = evaluate(card("p004-tipm"), {"nlr": iv("high", "1"), "swe_sites_increased": iv(5.5, "count"),
                                     "albumin": iv(38, "g/dL")})
    text = " | ".join(r["reasons"])
    assert len(r["reasons"]) == 4
    assert "'nlr'" in text and "not a number" in text and "whole number" in text
    assert "expects 'g/L'" in text and "'tumor_diameter_us'" in text and "missing" in text


def test_p000_reports_linear_predictor_not_probability():
    r = evaluate(card("p000-ecv-logistic"), {
        "tumor_ecv_iodine": iv(0.40, "1"), "crp": iv(5.0, "mg/L"), "il6": iv(6.0, "pg/mL"),
        "neutrophils": iv(5.0, "x10^9/L"), "other_antitumor_therapy": iv("yes", "bool")})
    assert r["status"] == EVALUATED
    # Table 3's betas; the constant -22.624 is left out (issue 16 point 7): the terms, not that sum
    contributions = [1.068 * 0.40, 0.921 * 5.0, 0.906 * 6.0, 0.525 * 5.0, 1.777 * 1]  # 0.4272 4.605 5.436 2.625 1.777
    o = r["outputs"]
    assert [t["contribution"] for t in o["terms"]] == pytest.approx(contributions)
    assert o["linear_predictor"] == pytest.approx(14.8702) and o["linear_predictor_includes_intercept"] is False
    assert "-22.624" in o["linear_predictor_note"] and "left out" in o["linear_predictor_note"]
    assert "+0.921 x C-reactive protein (5) = +4.605" in o["linear_predictor_note"]
    assert "probability" not in o
    assert "cannot reproduce" in r["withheld"]["probability"]


def test_p003_points_and_withheld_risk_group():
    r = evaluate(card("p003-nomogram"), {"t2_sir_post": iv(3.833, "1"), "adc_mean_post": iv(1.317, "10^-3 mm^2/s"),
                                         "nlr": iv(2.0, "1")})
    o = r["outputs"]
    assert o["linear_predictor"] == pytest.approx(math.log(8.692) + math.log(0.189))
    assert o["linear_predictor_includes_intercept"] is False
    # 100 points for the largest |ln OR| (T2 SIR); NLR < 4.41 is NLR's higher-risk level (OR < 1).
    assert o["derived_points"] == pytest.approx(100 + 0 + 100 * abs(math.log(0.162)) / math.log(8.692))
    assert "probability" in r["withheld"] and "0.698" in r["withheld"]["risk_group"]


def test_p004_relative_log_odds_and_points_withheld():
    r = evaluate(card("p004-tipm"), {"nlr": iv(3.5, "1"), "swe_sites_increased": iv(5, "count"),
                                     "albumin": iv(40, "g/L"), "tumor_diameter_us": iv(8, "cm")})
    assert r["outputs"]["linear_predictor"] == pytest.approx(2.146 - 3.845 - 0.246 * 40 + 0.674 * 8)
    assert set(r["withheld"]) == {"probability", "points", "risk_group"}
    r3 = evaluate(card("p004-tipm"), {"nlr": iv(3.0, "1"), "swe_sites_increased": iv(4, "count"),
                                      "albumin": iv(40, "g/L"), "tumor_diameter_us": iv(8, "cm")})
    # NLR exactly 3 is not > 3; 4 of 9 sites is not Delta T positive
    assert r3["outputs"]["linear_predictor"] == pytest.approx(-0.246 * 40 + 0.674 * 8)


def test_cutoff_groups_ties_and_reported_hrs():
    c = card("p001-tumor-ecv")
    hi = evaluate(c, {"tumor_ecv_hu": iv(38.48, "%")})
    assert hi["outputs"]["risk_group"] == "Higher tumor ECV"
    assert {"metric": "hr_os_multivariable", "value": 0.384, "ci": [0.235, 0.628]}.items() <= hi["outputs"]["reported"][2].items()
    tie = evaluate(c, {"tumor_ecv_hu": iv(27.2, "%")})
    assert tie["status"] == EVALUATED and "risk_group" not in tie["outputs"]
    assert "does not say which group" in tie["withheld"]["risk_group"]
    assert evaluate(card("p000-ecv-cutoff"), {"tumor_ecv_iodine": iv(0.45, "1")})["outputs"]["risk_group"] == "ECV <= 0.45"


def test_opposite_ecv_directions_are_both_shown_with_cohorts():
    inputs = {"tumor_ecv_iodine": iv(0.50, "1"), "tumor_ecv_hu": iv(50.0, "%")}
    results = {r["card_id"]: r for r in evaluate_all(CARDS, inputs)}
    assert len(results) == len(CARDS)
    a, b = results["p000-ecv-cutoff"], results["p001-tumor-ecv"]
    assert a["outputs"]["risk_group_means"] == "predicted poor ICI efficacy"
    assert b["outputs"]["risk_group_means"] == "longer PFS and OS (protective)"
    assert a["cohort"]["n"] == 179 and b["cohort"]["n"] == 151
    assert any("opposite" in x for x in a["limitations"]) and any("opposite" in x for x in b["limitations"])
    assert results["p004-tipm"]["status"] == NOT_EVALUATED


def test_deterministic():
    assert evaluate(card("p002-nomogram"), P002) == evaluate(card("p002-nomogram"), P002)


values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=8))
units = st.one_of(st.sampled_from(["mm", "%", "1", "bool", "count", "g/L", "cm", "mg/L"]), st.text(max_size=6))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(CARDS)), st.dictionaries(st.sampled_from(
    ["tumor_size", "nic_ap", "ps", "nlr", "albumin", "tumor_ecv_iodine", "other_antitumor_therapy", "swe_sites_increased"]),
    st.tuples(values, units), max_size=6))
def test_engine_never_raises_on_garbage(key, raw):
    r = evaluate(CARDS[key], {k: {"value": v, "unit": u, "source": "fuzz"} for k, (v, u) in raw.items()})
    assert r["status"] in (EVALUATED, NOT_EVALUATED)
    assert (r["status"] == NOT_EVALUATED) == bool(r["reasons"])


def test_yes_no_is_not_a_number():
    r = evaluate(card("p002-nomogram"), {**P002, "ps": iv(True, "mL/min/100 g")})
    assert r["reasons"] == ["input 'ps' (permeability surface area product) must be a number in mL/min/100 g, got yes/no"]
