"""Phase / kind classification on hand-built headers (no files)."""

import pytest

from hccnode.imaging.phase_rules import load_rules
from hccnode.imaging.phases import PhaseMeasurement, Vote, beliefs, classify_study, relative_timing_votes
from hccnode.imaging.series_header import SeriesHeader

RULES = load_rules()
T0 = 8 * 3600.0


def ct(uid, desc="", t=None, **kw):
    return SeriesHeader(uid, study_uid="1.2.3", modality="CT", series_description=desc, acquisition_s=t, **kw)


def by_uid(headers, measure=None):
    return {d.series_uid: d for d in classify_study(headers, RULES, measure)}


@pytest.mark.parametrize("desc,phase", [
    ("Abdomen Nativ 5.0 Br40 3", "unenhanced"), ("NC 5mm", "unenhanced"), ("Plain 5mm", "unenhanced"),
    ("Pre-contrast liver", "unenhanced"), ("ART_1.0_B30f", "arterial"), ("Arteriell 3.0", "arterial"),
    ("Late arterial phase", "arterial"), ("PV 5mm", "portal_venous"), ("Portal Venous 5mm", "portal_venous"),
    ("Venös 3.0 Br40", "portal_venous"), ("Delayed 5mm", "equilibrium"), ("Equil 3 min", "equilibrium"),
    ("Abdomen Spaet 5 Br40", "equilibrium"), ("5 min delay", "equilibrium"), ("平扫 5mm", "unenhanced"),
])
def test_series_names_of_several_vendors_and_languages(desc, phase):
    d = by_uid([ct("1", desc)])["1"]
    assert d.kind == f"ct_{phase}", d.reasons
    assert any(r["rule"].endswith("-text") for r in d.reasons)


@pytest.mark.parametrize("desc,kind,kev", [
    ("MD Iodine(Water) Arterial", "dect_iodine", None), ("IodineNoWater 1mm", "dect_iodine", None),
    ("Iodine No Water", "dect_iodine", None), ("Liver VNC Iodine 1.0 Qr40", "dect_iodine", None),
    ("Water(Iodine)", "dect_vnc", None), ("VUE 5mm", "dect_vnc", None), ("Liver VNC 1.0 Qr40", "dect_vnc", None),
    ("MonoE 40keV", "dect_vmi", 40.0), ("Mono+ 90 keV Qr40", "dect_vmi", 90.0), ("GSI 70keV", "dect_vmi", 70.0),
])
def test_dect_vendor_names(desc, kind, kev):
    d = by_uid([ct("1", desc)])["1"]
    assert d.kind == kind, d.reasons
    assert d.kev == kev


def test_dect_standard_multienergy_attributes():
    vmi = ct("1", image_type=("DERIVED", "PRIMARY", "AXIAL", "VMI"), kev=50.0, multienergy=True)
    iodine = ct("2", image_type=("DERIVED", "PRIMARY", "AXIAL", "MAT_SPECIFIC"), materials=("Iodine",))
    vnc = ct("3", image_type=("DERIVED", "PRIMARY", "AXIAL", "MAT_REMOVED"), materials=("Iodine",))
    zeff = ct("4", image_type=("DERIVED", "PRIMARY", "AXIAL", "EFF_ATOMIC_NUM"))
    d = by_uid([vmi, iodine, vnc, zeff])
    assert (d["1"].kind, d["1"].kev) == ("dect_vmi", 50.0)
    assert d["2"].kind == "dect_iodine" and d["3"].kind == "dect_vnc" and d["4"].kind == "other"


def test_dect_series_take_the_phase_of_their_acquisition():
    d = by_uid([ct("1", "Arterial 5mm", T0 + 30), ct("2", "MD Iodine(Water)", T0 + 31), ct("3", "VUE", T0 + 31)])
    assert d["2"].kind == "dect_iodine" and d["2"].phase == "arterial"
    assert d["3"].kind == "dect_vnc" and d["3"].phase == "arterial"
    assert any(r.get("from_series") == "1" for r in d["2"].reasons)


def test_standard_contrast_phase_attribute():
    d = by_uid([ct("1", contrast_phase=("PORTAL_VENOUS",)), ct("2", contrast_phase=("PRE_CONTRAST",))])
    assert d["1"].kind == "ct_portal_venous" and d["2"].kind == "ct_unenhanced"


@pytest.mark.parametrize("delay,phase", [(-60, "unenhanced"), (30, "arterial"), (70, "portal_venous"),
                                         (120, "equilibrium"), (180, "equilibrium")])
def test_bolus_start_time_decides_stripped_series(delay, phase):
    d = by_uid([ct("1", t=T0 + delay, contrast_start_s=T0)])["1"]
    assert d.kind == f"ct_{phase}"
    assert any(r["rule"].startswith(("bolus-delay", "acquired-before")) for r in d.reasons)


def test_delay_between_windows_is_reported_not_guessed():
    d = by_uid([ct("1", t=T0 + 105, contrast_start_s=T0)])["1"]
    assert d.kind == "ambiguous"
    assert any(r["rule"] == "bolus-delay-between-windows" for r in d.reasons)


def test_relative_timing_orders_stripped_acquisitions():
    # Paper 000 delays (25-30 s, 65-70 s, 2 min) after an unenhanced scan; no names, no bolus time.
    hs = [ct("u", "Nativ", T0), ct("a", t=T0 + 150), ct("p", t=T0 + 190), ct("e", t=T0 + 240)]
    d = by_uid(hs)
    assert [d[k].kind for k in "ape"] == ["ct_arterial", "ct_portal_venous", "ct_equilibrium"]
    assert all(any(r["rule"] == "relative-timing" for r in d[k].reasons) for k in "ape")


def test_relative_timing_is_silent_when_two_labellings_fit():
    votes, summary = relative_timing_votes([0.0, 40.0], ["E", "E"], RULES)
    assert votes == [None, None]       # arterial+portal and portal+equilibrium both fit
    assert len(summary["fits"]) == 2


def test_shuffled_input_order_gives_the_same_decisions():
    hs = [ct("u", "Nativ", T0), ct("a", "ART", T0 + 150), ct("p", t=T0 + 190), ct("e", t=T0 + 240)]
    first = {k: v.kind for k, v in by_uid(hs).items()}
    assert {k: v.kind for k, v in by_uid(list(reversed(hs))).items()} == first


def test_conflicting_names_are_ambiguous_with_reasons():
    d = by_uid([ct("1", "Arterial portal")])["1"]
    assert d.kind == "ambiguous"
    cands = [r for r in d.reasons if r["rule"] == "phase-undecided"][0]["candidates"]
    assert {c["label"] for c in cands} == {"arterial", "portal_venous"}


def test_unknown_ct_without_evidence_is_ambiguous_not_guessed():
    d = by_uid([ct("1")])["1"]
    assert d.kind == "ambiguous" and d.phase is None
    assert any(r["rule"] == "not-measured" for r in d.reasons)


def test_localizer_dose_report_and_bolus_tracking_are_other():
    d = by_uid([ct("1", "Topogram 0.6 T20f", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
                ct("2", "Dose Report"), ct("3", "CARE Bolus"), ct("4", "SmartPrep")])
    assert all(d[k].kind == "other" for k in "1234")


@pytest.mark.parametrize("h,kind", [
    (SeriesHeader("1", modality="MR", series_description="t2_haste_fs_tra"), "mr_t2"),
    (SeriesHeader("1", modality="MR", series_description="Ax SSFSE T2"), "mr_t2"),
    (SeriesHeader("1", modality="MR", series_description="ep2d_diff_b50_800_tra", b_values=(50.0, 800.0)), "mr_dwi"),
    (SeriesHeader("1", modality="MR", series_description="x", image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW")), "mr_dwi"),
    (SeriesHeader("1", modality="MR", series_description="ep2d_diff_ADC", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")), "mr_adc"),
    (SeriesHeader("1", modality="MR", series_description="ADC (10^-6 mm2/s)"), "mr_adc"),
    (SeriesHeader("1", modality="MR", series_description="t1_vibe_dixon_tra_W"), "other"),
    (SeriesHeader("1", modality="MR", series_description="t2*_fl2d"), "other"),
    (SeriesHeader("1", modality="SR", series_description="Dose"), "other"),
])
def test_mr_kinds(h, kind):
    d = by_uid([h])["1"]
    assert d.kind == kind, d.reasons


def test_dwi_reports_b_values():
    d = by_uid([SeriesHeader("1", modality="MR", series_description="DWI", b_values=(50.0, 800.0))])["1"]
    assert d.b_values == (50.0, 800.0)


def _measure(values):
    return lambda h: PhaseMeasurement(aorta_hu=values[h.series_uid][0], liver_hu=values[h.series_uid][1], air_fraction=0.4)


def test_images_resolve_stripped_headers():
    hs = [ct(k) for k in "uape"]
    hu = {"u": (42, 58), "a": (320, 75), "p": (180, 112), "e": (135, 100)}
    d = by_uid(hs, _measure(hu))
    assert [d[k].kind for k in "uape"] == ["ct_unenhanced", "ct_arterial", "ct_portal_venous", "ct_equilibrium"]
    assert d["a"].measurement.aorta_hu == 320


def test_header_image_conflict_lowers_confidence_and_is_reported():
    agree = by_uid([ct("1", "Arterial")], _measure({"1": (320, 75)}))["1"]
    clash = by_uid([ct("1", "Arterial")], _measure({"1": (42, 58)}))["1"]
    assert agree.kind == "ct_arterial"
    assert clash.confidence < agree.confidence
    assert clash.kind != "ct_arterial" or clash.confidence < 0.5
    assert any(r["rule"] == "evidence-conflict" for r in clash.reasons)


def test_virtual_unenhanced_image_within_an_enhanced_acquisition_is_vnc():
    hs = [ct("a", t=T0), ct("v", t=T0 + 1)]
    d = by_uid(hs, _measure({"a": (320, 75), "v": (42, 58)}))
    assert d["v"].kind == "dect_vnc"


def test_non_hu_image_is_not_given_a_ct_phase():
    m = lambda h: PhaseMeasurement(aorta_hu=None, liver_hu=None, air_fraction=0.0, median_value=0.4, p99_value=14.0)
    d = by_uid([ct("1")], m)["1"]
    assert d.kind == "dect_iodine"


def test_dempster_combination_conflict_and_agreement():
    a = Vote("header", "x", "phase", frozenset({"arterial"}), 0.6)
    p = Vote("header", "y", "phase", frozenset({"portal_venous"}), 0.6)
    b = beliefs([a, p], ["arterial", "portal_venous"])
    assert b["arterial"] == pytest.approx(b["portal_venous"]) and b["arterial"] < 0.5
    assert beliefs([a, a], ["arterial", "portal_venous"])["arterial"] == pytest.approx(0.84)


def test_unenhanced_looking_aorta_with_enhanced_liver_is_not_called_unenhanced():
    # e.g. an aorta ROI that missed the lumen: the liver at 110 HU contradicts it.
    d = by_uid([ct("1")], _measure({"1": (45, 110)}))["1"]
    assert d.kind == "ambiguous"
    assert {r["rule"] for r in d.reasons} >= {"unenhanced-aorta", "enhanced-liver"}


def test_unnamed_mr_t2_from_echo_and_repetition_times():
    t2 = SeriesHeader("1", modality="MR", echo_time=85.0, repetition_time=5000.0, scanning_sequence=("SE",))
    dwi = SeriesHeader("2", modality="MR", echo_time=55.0, repetition_time=3100.0, scanning_sequence=("EP", "SE"))
    t1 = SeriesHeader("3", modality="MR", echo_time=2.3, repetition_time=4.5, scanning_sequence=("GR",))
    d = by_uid([t2, dwi, t1])
    assert d["1"].kind == "mr_t2"
    assert d["2"].kind == "other" and d["3"].kind == "other"


def test_when_needed_policy_skips_images_for_confident_headers():
    import dataclasses
    rules = dataclasses.replace(RULES, image={**RULES.image, "use": "when_needed"})
    calls = []

    def measure(h):
        calls.append(h.series_uid)
        return PhaseMeasurement(aorta_hu=320, liver_hu=75, air_fraction=0.4)

    hs = [ct("sure", "Arterial", T0 + 30, contrast_start_s=T0), ct("unsure", t=T0 + 300)]
    classify_study(hs, rules, measure)
    assert calls == ["unsure"]


def test_image_checks_go_through_the_given_map_and_decide_as_one_at_a_time():
    """The I/O shell measures series in a thread pool (`map_measure`): the decisions are those of
    measuring them one after another, each measurement attached to its own series."""
    from concurrent.futures import ThreadPoolExecutor

    values = {"a": (330.0, 70.0), "b": (150.0, 110.0), "c": (45.0, 55.0)}

    def measure(h):
        aorta, liver = values[h.series_uid]
        return PhaseMeasurement(aorta_hu=aorta, liver_hu=liver, air_fraction=0.4)

    hs = [ct("a", t=T0 + 30), ct("b", t=T0 + 70), ct("c", t=T0 + 200)]
    used = []

    def pool_map(f, items):
        items = list(items)
        used.append([h.series_uid for h in items])
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(f, items))

    one_by_one = classify_study(hs, RULES, measure)
    pooled = classify_study(hs, RULES, measure, pool_map)
    assert used == [["a", "b", "c"]]
    assert pooled == one_by_one
    assert [d.measurement.aorta_hu for d in pooled] == [330.0, 150.0, 45.0]


def test_kind_conflict_between_header_and_image_is_reported():
    m = lambda h: PhaseMeasurement(aorta_hu=None, liver_hu=None, air_fraction=0.0, median_value=0.4, p99_value=14.0)
    d = by_uid([ct("1", "Abdomen 5mm")], m)["1"]
    conflict = [r for r in d.reasons if r["rule"] == "evidence-conflict" and r["axis"] == "kind"]
    assert conflict and conflict[0]["values"]["contradicts"]["image"] == ["ct"]


from hypothesis import HealthCheck, given, settings, strategies as st

ALL_KINDS = {"ct_unenhanced", "ct_arterial", "ct_portal_venous", "ct_equilibrium", "dect_iodine", "dect_vmi",
             "dect_vnc", "mr_t2", "mr_dwi", "mr_adc", "other", "ambiguous"}


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["CT", "MR", "SR", ""]), st.text(max_size=40),
                          st.lists(st.text(max_size=12), max_size=5),
                          st.one_of(st.none(), st.floats(0, 86399))), min_size=1, max_size=6))
def test_any_headers_give_a_known_kind_with_reasons(series):
    hs = [SeriesHeader(str(i), modality=m, series_description=desc, image_type=tuple(it), acquisition_s=t)
          for i, (m, desc, it, t) in enumerate(series)]
    for d in classify_study(hs, RULES):
        assert d.kind in ALL_KINDS
        assert 0.0 <= d.confidence <= 1.0
        assert d.reasons
