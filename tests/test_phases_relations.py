"""Phases from the study's own relations when headers say nothing (hccnode.imaging.phase_relations).

Typical values worked from the sources in the rules file ([relations]), HU:
  unenhanced  aorta 40, liver 55
  arterial    aorta gains ~310 (300-336 after the trigger), liver ~20 (15-25)   -> 350 / 75
  portal      aorta gains ~150 (falling from the peak), liver ~60 (its peak)    -> 190 / 115
  3 min       aorta gains ~95; liver gains ECV/(1-HCT) x that = 0.29/0.6 x 95  -> 135 / 101
"""

import dataclasses

import pytest

from hccnode.imaging.phase_relations import Acquisition, RelationParams, relate_phases
from hccnode.imaging.phase_rules import RELATION_MARGINS, load_rules
from hccnode.imaging.phases import PhaseMeasurement, classify_study
from hccnode.imaging.series_header import SeriesHeader

RULES = load_rules()
PARAMS = RelationParams(**{k: float(RULES.relations[k]) for k in RELATION_MARGINS})
A, P, E = (350.0, 75.0), (190.0, 115.0), (135.0, 101.0)
ART, PV, EQ = "arterial", "portal_venous", "equilibrium"
T0 = 8 * 3600.0


KEY_NAMES = {"sn": "series number", "t": "acquisition time"}


def acq(key, hu, instances=None, **order):
    return Acquisition(key, hu[0], hu[1], {KEY_NAMES[k]: v for k, v in order.items()}, instances, label=f"series {key}")


def fits(result):
    return {k: (r.phase if r.phase else frozenset(r.phases)) for k, r in result.items()}


CASES = [
    # (name, acquisitions, expected phase or set of phases left per key; empty set = not related)
    ("three acquisitions, no ordering key, given in any order",
     [acq("b", P), acq("c", E), acq("a", A)], {"a": ART, "b": PV, "c": EQ}),
    ("three acquisitions, series numbers agree",
     [acq("3", A, sn=3), acq("4", P, sn=4), acq("5", E, sn=5)], {"3": ART, "4": PV, "5": EQ}),
    ("series numbers put the portal venous one before the arterial one",
     [acq("5", A, sn=5), acq("4", P, sn=4), acq("6", E, sn=6)], {"5": frozenset(), "4": frozenset(), "6": frozenset()}),
    ("times put the equilibrium one first although series numbers agree with the images",
     [acq("3", A, sn=3, t=300), acq("4", P, sn=4, t=340), acq("5", E, sn=5, t=150)],
     {"3": frozenset(), "4": frozenset(), "5": frozenset()}),
    ("two enhanced: arterial and portal venous -> the arterial one is known, the other only post-arterial",
     [acq("a", A), acq("p", P)], {"a": ART, "p": frozenset({PV, EQ})}),
    ("two enhanced, neither clearly arterial (portal venous and 3 min) -> nothing decided",
     [acq("p", P), acq("e", E)], {"p": frozenset({ART, PV}), "e": frozenset({PV, EQ})}),
    ("liver not found in the portal venous series: aorta relations there (350 -> 190 -> 135)",
     [acq("a", A), acq("p", (190.0, None)), acq("e", E)], {"a": ART, "p": PV, "e": EQ}),
    ("no liver anywhere, early arterial aorta only 30 HU above portal: only the lowest aorta is told",
     [acq("a", (220.0, None)), acq("p", (190.0, None)), acq("e", (135.0, None))],
     {"a": frozenset({ART, PV}), "p": frozenset({ART, PV}), "e": EQ}),
    ("portal venous at 90 s and equilibrium at 120 s barely differ: the order of the two is not taken "
     "from series numbers alone",
     [acq("3", A, sn=3), acq("4", (178.0, 113.0), sn=4), acq("5", (170.0, 110.0), sn=5)],
     {"3": ART, "4": frozenset({PV, EQ}), "5": frozenset({PV, EQ})}),
    ("early and late arterial and portal venous (a dual arterial protocol): no assignment of three "
     "distinct phases fits",
     [acq("ea", (250.0, 58.0)), acq("la", (330.0, 75.0)), acq("pv", P)],
     {"ea": frozenset(), "la": frozenset(), "pv": frozenset()}),
    ("the liver rises 30 HU after the would-be portal venous series while the aorta falls 40: "
     "no order of the two fits, nothing is decided",
     [acq("a", A), acq("x", (190.0, 95.0)), acq("y", (150.0, 125.0))],
     {"a": frozenset(), "x": frozenset(), "y": frozenset()}),
    ("instance numbers continued across the examination contradict the images",
     [acq("a", A, instances=(201, 300)), acq("p", P, instances=(1, 100)), acq("e", E, instances=(101, 200))],
     {"a": frozenset(), "p": frozenset(), "e": frozenset()}),
    ("instance numbers restarting at 1 in every series say nothing",
     [acq("a", A, instances=(1, 100)), acq("p", P, instances=(1, 100)), acq("e", E, instances=(1, 100))],
     {"a": ART, "p": PV, "e": EQ}),
    ("four enhanced acquisitions: more than the phases, not related",
     [acq("a", A), acq("p", P), acq("e", E), acq("d", (110.0, 90.0))],
     {"a": frozenset(), "p": frozenset(), "e": frozenset(), "d": frozenset()}),
    ("one enhanced acquisition: nothing to relate", [acq("p", P)], {"p": frozenset()}),
    ("aorta not measured in one of two", [acq("a", A), acq("p", (None, 115.0))], {"a": frozenset(), "p": frozenset()}),
]


@pytest.mark.parametrize("name,acqs,expected", CASES, ids=[c[0][:60] for c in CASES])
def test_relations_table(name, acqs, expected):
    result = relate_phases(acqs, PARAMS)
    assert fits(result) == expected
    for r in result.values():
        assert r.why
        if r.phase:
            assert r.evidence and all(e["value"] >= e["margin"] for e in r.evidence)


def test_the_reason_names_what_disagrees():
    order = relate_phases([acq("5", A, sn=5), acq("4", P, sn=4), acq("6", E, sn=6)], PARAMS)
    assert "series number put series 4 (4) before series 5 (5)" in order["5"].why
    assert order["5"].order_against == {"series number"}
    neither = relate_phases([acq("p", P), acq("e", E)], PARAMS)
    assert "several assignments fit" in neither["p"].why
    dual = relate_phases([acq("ea", (250.0, 58.0)), acq("la", (330.0, 75.0)), acq("pv", P)], PARAMS)
    assert dual["ea"].why.startswith("no assignment of phases fits the enhancement")
    no_liver = relate_phases([acq("a", A), acq("p", (190.0, None)), acq("e", E)], PARAMS)
    assert no_liver["a"].notes == ["liver not measured in series p: its relations use the aorta only"]
    assert any(e["relation"] == "aorta drop after arterial (no liver)" for e in no_liver["a"].evidence)


def test_times_that_contradict_the_images_are_named():
    r = relate_phases([acq("3", A, sn=3, t=300), acq("4", P, sn=4, t=340), acq("5", E, sn=5, t=150)], PARAMS)
    assert r["3"].order_against == {"acquisition time"}


# ------------------------------------------------------------------ within classify_study

def ct(uid, sn, t=None):
    return SeriesHeader(uid, study_uid="1.2.3", modality="CT", series_number=sn, acquisition_s=t)


def measure(values):
    return lambda h: PhaseMeasurement(aorta_hu=values[h.series_uid][0], liver_hu=values[h.series_uid][1], air_fraction=0.4)


def by_uid(headers, values, rules=RULES):
    return {d.series_uid: d for d in classify_study(headers, rules, measure(values))}


def test_stripped_headers_decided_by_relations_with_reasons():
    # Values where no single absolute image rule decides portal venous or equilibrium: aorta minus
    # liver 50-59 in both (between the portal and equilibrium rules' ranges), liver < 85 HU
    # (a patient with little hepatic enhancement).
    values = {"u": (42.0, 52.0), "a": (300.0, 62.0), "p": (140.0, 84.0), "e": (118.0, 66.0)}
    hs = [ct("u", 2), ct("a", 3), ct("p", 4), ct("e", 5)]
    without = by_uid(hs, values, dataclasses.replace(RULES, relations={**RULES.relations, "use": False}))
    assert without["p"].kind == "ambiguous" and without["e"].kind == "ambiguous"
    d = by_uid(hs, values)
    assert [d[k].kind for k in "uape"] == ["ct_unenhanced", "ct_arterial", "ct_portal_venous", "ct_equilibrium"]
    rel = [r for r in d["e"].reasons if r["source"] == "relation"][0]
    assert rel["rule"] == "relation-equilibrium" and rel["values"]["fits"] == ["equilibrium"]
    assert "series number" in rel["values"]["why"]


def test_liver_not_found_in_a_series_uses_the_aorta_and_says_so():
    values = {"a": (350.0, 75.0), "p": (190.0, None), "e": (135.0, 101.0)}
    d = by_uid([ct("a", 3), ct("p", 4), ct("e", 5)], values)
    rel = [r for r in d["p"].reasons if r["source"] == "relation"][0]
    assert rel["values"]["fits"] == ["portal_venous"]
    assert rel["values"]["notes"] == ["liver not measured in series 4: its relations use the aorta only"]
    assert d["p"].phase == "portal_venous"


def test_times_against_the_images_leave_it_ambiguous_not_wrong():
    # Times rotated (the arterial series carries the last time): neither the relations nor relative
    # timing decide; the reasons say why.
    values = {"a": (300.0, 70.0), "p": (170.0, 95.0), "e": (150.0, 90.0)}
    hs = [ct("a", 3, T0 + 300), ct("p", 4, T0 + 150), ct("e", 5, T0 + 200)]
    d = by_uid(hs, values)
    truth = {"a": "ct_arterial", "p": "ct_portal_venous", "e": "ct_equilibrium"}
    assert all(d[k].kind in (truth[k], "ambiguous") for k in truth)
    rules = {r["rule"] for k in truth for r in d[k].reasons}
    assert {"relation-undecided", "relative-timing-set-aside"} <= rules
    assert not any(r["rule"] == "relative-timing" for k in truth for r in d[k].reasons)


def test_one_phase_for_two_acquisitions_from_images_alone_is_withdrawn():
    # Two post-arterial acquisitions the images do not separate, both matching the portal venous
    # image rule: at most one can be portal venous.
    values = {"a": (300.0, 70.0), "p": (175.0, 95.0), "e": (170.0, 100.0)}
    d = by_uid([ct("a", 3), ct("p", 4), ct("e", 5)], values)
    assert d["a"].kind == "ct_arterial"
    assert d["p"].kind == d["e"].kind == "ambiguous"
    rep = [r for r in d["e"].reasons if r["rule"] == "phase-repeated"][0]
    assert rep["values"]["phase"] == "portal_venous" and rep["values"]["series"] == ["4", "5"]


def test_a_phase_named_in_the_header_is_not_withdrawn():
    values = {"a": (300.0, 70.0), "p": (175.0, 95.0), "e": (170.0, 100.0)}
    hs = [ct("a", 3), ct("p", 4), ct("e", 5)]
    hs[1].series_description = "Portal venous"
    d = by_uid(hs, values)
    assert d["p"].kind == "ct_portal_venous"


def test_relations_off_in_the_rules_file(tmp_path):
    from importlib import resources
    text = resources.files("hccnode").joinpath("data", "phase_rules.toml").read_text(encoding="utf-8")
    f = tmp_path / "site.toml"
    assert "\nuse = true\nweight = 0.8\n" in text
    f.write_text(text.replace("\nuse = true\nweight = 0.8\n", "\nuse = false\nweight = 0.8\n", 1))
    rules = load_rules(f)
    assert rules.relations["use"] is False
    d = by_uid([ct("a", 3), ct("p", 4), ct("e", 5)], {"a": A, "p": P, "e": E}, rules)
    assert not any(r["source"] == "relation" for x in d.values() for r in x.reasons)


def test_bad_relation_margins_are_reported(tmp_path):
    from hccnode.imaging.phase_rules import RulesError, parse_rules
    with pytest.raises(RulesError) as exc:
        parse_rules({"meta": {"version": "t"}, "timing": {"arterial": [10, 45], "portal_venous": [50, 100],
                                                          "equilibrium": [110, 1800]},
                     "relations": {"liver_rise_min": -5, "weight": 2}})
    assert "[relations] liver_rise_min" in str(exc.value) and "[relations] weight" in str(exc.value)


# ------------------------------------------------------------------ physiology ranges, any order

from hypothesis import given, settings, strategies as st  # noqa: E402


@st.composite
def studies(draw):
    """Three enhanced acquisitions drawn from the ranges in the module docstring's sources:
    arterial aorta gain 200-350 with liver 5-30; portal venous aorta 110-200 with liver 45-70;
    equilibrium aorta 55-90 % of the portal venous one, liver ECV/(1-HCT) = 0.35-0.65 of it (but not
    above its portal venous peak); baselines aorta 30-55, liver 40-70; ROI error +-3 HU; the liver
    not found in any one series at random; given in any order, with or without series numbers."""
    a0, l0 = draw(st.floats(30, 55)), draw(st.floats(40, 70))
    art = (draw(st.floats(200, 350)), draw(st.floats(5, 30)))
    pv = (draw(st.floats(110, 200)), draw(st.floats(45, 70)))
    eq_aorta = pv[0] * draw(st.floats(0.55, 0.85))
    eq = (eq_aorta, min(eq_aorta * draw(st.floats(0.35, 0.65)), pv[1]))
    err = st.floats(-3, 3)
    truth = {"x": ART, "y": PV, "z": EQ}
    gains = {"x": art, "y": pv, "z": eq}
    missing = draw(st.sampled_from([None, "x", "y", "z"]))
    numbered = draw(st.booleans())
    acqs = []
    for k in draw(st.permutations(["x", "y", "z"])):
        ga, gl = gains[k]
        liver = None if k == missing else l0 + gl + draw(err)
        order = {"series number": 3 + "xyz".index(k)} if numbered else {}
        acqs.append(Acquisition(k, a0 + ga + draw(err), liver, order))
    return acqs, truth


@settings(max_examples=300, deadline=None)
@given(studies())
def test_never_a_wrong_phase_over_the_physiological_ranges(study):
    acqs, truth = study
    for key, r in relate_phases(acqs, PARAMS).items():
        assert r.phase in (None, truth[key]), (acqs, r)
        if r.phases:
            assert truth[key] in r.phases


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.floats(-1000, 3000)), st.one_of(st.none(), st.floats(-1000, 3000)),
                          st.one_of(st.none(), st.integers(-5, 5000))), max_size=5))
def test_any_values_give_an_answer_with_a_reason(values):
    acqs = [Acquisition(str(i), a, liver, {} if n is None else {"series number": n}) for i, (a, liver, n) in enumerate(values)]
    result = relate_phases(acqs, PARAMS)
    assert set(result) == {a.key for a in acqs}
    decided = [r.phase for r in result.values() if r.phase]
    assert len(decided) == len(set(decided)) and all(r.why for r in result.values())


# ------------------------------------------------------------------ phantom studies, files to the index

@pytest.fixture(scope="module")
def sweep():
    from phases_sweep import run, sweep_specs, without_relations
    return run(sweep_specs(30), {"with": RULES, "without": without_relations(RULES)})


def test_sweep_of_varied_stripped_studies_gives_no_wrong_phase(sweep):
    from phases_sweep import rates
    assert len({id(r["spec"]) for r in sweep}) == 30
    with_, without = rates(sweep, "with"), rates(sweep, "without")
    assert with_["wrong"] == 0, [(r["truth"], r["decision"].kind) for r in sweep if r["outcome"] == "wrong"]
    assert with_["correct"] >= without["correct"]


def test_sweep_ambiguous_series_say_why(sweep):
    for r in sweep:
        if r["rules"] == "with" and r["outcome"] == "ambiguous":
            rules = {x["rule"] for x in r["decision"].reasons}
            assert rules & {"relation-undecided", "phase-repeated", "phase-undecided"}, rules


def test_relation_reasons_are_stored(tmp_path):
    from hccnode.imaging import phase_index
    from hccnode.store.phases import stored_phases
    from hccnode.phantom import StudySpec, generate
    from hccnode.store.db import Store
    from phantom_index import expected, index_files
    truth = generate(StudySpec(kind="cect", vendor="ge", seed=31, slices=6, matrix=80,
                               header_faults=("no_description", "no_contrast", "no_times")), tmp_path / "p")
    store = Store(tmp_path)
    (study,) = index_files(store, tmp_path / "p")
    phase_index.classify_and_store(store, study, RULES)
    rows = {r["series_uid"]: r for r in stored_phases(store, study)}
    store.close()
    exp = expected(truth.as_dict())
    for uid, e in exp.items():
        if e["kind"] in ("ct_arterial", "ct_portal_venous", "ct_equilibrium"):
            assert rows[uid]["kind"] in (e["kind"], "ambiguous")
            assert any(r["source"] == "relation" for r in rows[uid]["reasons"])
