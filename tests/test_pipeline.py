"""The study pipeline on phantom studies in a node store: values against the phantom's truth
(issue 5 tolerances), provenance, missing inputs with reasons, re-runs, outputs and audit."""

from __future__ import annotations

import datetime as dt
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pipeline_support import add_labs, by_marker, phantom_store, scratch_dir
from report_support import analysis_sr, dciodvfy, walk

from hccnode.imaging.measure import READER
from hccnode.phantom import Motion, StudySpec
from hccnode.pipeline import analyze_study
from hccnode.pipeline.regions import placer
from hccnode.store import audit


@pytest.fixture(scope="module")
def cect():
    root = scratch_dir("pipe-cect")
    store, truth, (study,) = phantom_store(
        root, StudySpec(kind="cect", seed=11, slices=12, matrix=64, noise_sd=2.0, seg_phase="equilibrium"))
    yield store, truth, study
    store.close()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cect_runs(cect):
    """First without a hematocrit, then with it, then the same again."""
    store, truth, study = cect
    runs = {"no_hct": analyze_study(store, study)}
    add_labs(store, truth, [("hct", 100 * truth.data["hct"], "%", -2.0)])
    runs["hct"] = analyze_study(store, study)
    runs["again"] = analyze_study(store, study)
    return runs


def test_cect_ecv_against_truth_with_provenance(cect, cect_runs):
    _, truth, _ = cect
    a = cect_runs["hct"]
    for role, marker in (("tumor", "ecv_tumor"), ("liver", "ecv_liver")):
        m = by_marker(a, marker)
        assert abs(m.value - 100 * truth.roi(role)["ecv"]) <= 0.5, (role, m.value)  # issue 5, aligned phases
        assert m.unit == "%" and m.formula == "paper001.ecv_cect"
        assert m.roi.source == READER and m.roi.annotation_uid == truth.series("seg")[0]["sop_instance_uids"][0]
        assert m.lab.name == "hct" and m.lab.value == pytest.approx(truth.data["hct"])
        assert {s.phase for s in m.series} == {"unenhanced", "equilibrium"}
        assert {s.series_uid for s in m.series} == {truth.series("ct_unenhanced")[0]["series_instance_uid"],
                                                   truth.series("ct_equilibrium")[0]["series_instance_uid"]}
        assert m.registration["ok"] is True and m.registration["ncc_after"] > 0.9
    d = by_marker(a, "tumor_diameter")
    assert abs(d.value - truth.roi("tumor")["diameter_mm"]) <= truth.data["geometry"]["pixel_spacing_mm"]
    cards = {r["card_id"]: r for r in a.model_results}
    assert cards["p001-tumor-ecv"]["status"] == "evaluated"
    assert cards["p001-tumor-ecv"]["inputs_used"]["tumor_ecv_hu"]["value"] == by_marker(a, "ecv_tumor").value
    assert "p000-ecv-cutoff" not in cards  # a DECT card on a CECT study is not run


def test_missing_hct_reports_ecv_missing_with_the_reason(cect_runs):
    a = cect_runs["no_hct"]
    for marker in ("ecv_tumor", "ecv_liver"):
        m = by_marker(a, marker)
        assert m.value is None and "hct" in m.reason and "no hct result" in m.lab_missing_reason
    assert by_marker(a, "tumor_delta_hu").value is not None  # what could be measured still is
    sr = analysis_sr(a.out_dir / "sr.dcm")
    texts = [str(i.get("TextValue", "")) for i in walk(sr.ContentSequence)]
    assert any("ecv_tumor" in t and "not measured" in t and "hct" in t for t in texts)
    assert not (a.out_dir / "ecv_map.dcm").exists()


def test_changed_input_gives_a_new_sr_naming_the_old_and_a_rerun_the_same_uids(cect_runs):
    first, second, again = cect_runs["no_hct"], cect_runs["hct"], cect_runs["again"]
    sr_uid = lambda a: str(pydicom.dcmread(a.out_dir / "sr.dcm").SOPInstanceUID)  # noqa: E731
    assert sr_uid(second) != sr_uid(first)
    assert second.replaces == sr_uid(first)
    pred = pydicom.dcmread(second.out_dir / "sr.dcm").PredecessorDocumentsSequence[0]
    assert pred.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sr_uid(first)
    assert again.output_uids == second.output_uids and again.out_dir == second.out_dir
    assert [m.to_dict() for m in again.measurements] == [m.to_dict() for m in second.measurements]


def test_cect_outputs_validate_and_read_back(cect, cect_runs):
    store, truth, study = cect
    a = cect_runs["hct"]
    assert [p.name for p in a.files] == ["seg.dcm", "ecv_map.dcm", "sr.dcm", "sr_results.dcm", "summary.dcm"]
    for p in a.files:
        errors, _ = dciodvfy(p)
        assert errors == [], (p.name, errors)
        assert pydicom.dcmread(p).StudyInstanceUID == study
    sr = hd.sr.srread(a.out_dir / "sr.dcm")
    values = [float(i.MeasuredValueSequence[0].NumericValue) for i in walk(sr.ContentSequence)
              if i.get("ValueType") == "NUM" and i.get("MeasuredValueSequence")]
    assert any(v == pytest.approx(by_marker(a, "ecv_tumor").value, abs=1e-3) for v in values)
    # the map over the liver: its median is the liver's ECV
    pm = pydicom.dcmread(a.out_dir / "ecv_map.dcm")
    arr = pm.pixel_array.astype(float)
    inside = arr[arr != float(pm.FloatPixelPaddingValue)]
    slope = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].RealWorldValueSlope
    assert abs(np.median(inside) * slope - 100 * truth.roi("liver")["ecv"]) <= 1.0
    seg = hd.seg.segread(a.out_dir / "seg.dcm")
    assert {d.segment_label for d in seg.SegmentSequence} >= {"Tumor (reader)", "Liver (reader)", "Aorta (reader)"}
    events = {r["event"] for r in audit.rows(store, study)}
    assert {"phase.decided", "roi.source", "lab.matched", "model.evaluated", "output.created"} <= events


def test_registration_brings_a_moved_unenhanced_phase_back():
    root = scratch_dir("pipe-move")
    try:
        store, truth, (study,) = phantom_store(root, StudySpec(
            kind="cect", seed=3, slices=16, matrix=96, noise_sd=2.0, seg_phase="equilibrium",
            motion={"unenhanced": Motion(shift_mm=(3.0, 4.0, 0.0), rotation_deg=3.0)}))
        add_labs(store, truth, [("hct", 40, "%", -1.0)])
        a = analyze_study(store, study)
        for role, marker in (("tumor", "ecv_tumor"), ("liver", "ecv_liver")):
            m = by_marker(a, marker)
            assert abs(m.value - 100 * truth.roi(role)["ecv"]) <= 1.0, (role, m.value)  # issue 5, moved phase
            assert m.registration["translation_mm"] > 2.0  # the motion was found, not assumed away
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_unreadable_series_is_reported_and_the_rest_measured_without_reader_rois():
    root = scratch_dir("pipe-bad")
    try:
        store, truth, (study,) = phantom_store(
            root, StudySpec(kind="cect", seed=5, slices=8, matrix=48, noise_sd=2.0), drop={"ct_unenhanced": 3})
        a = analyze_study(store, study)
        number = truth.series("ct_unenhanced")[0]["series_number"]
        assert any(f"series {number}" in n and "missing slices" in n for n in a.missing), a.missing
        assert any(n.startswith("tumor not measured") and "never placed automatically" in n for n in a.missing)
        if placer("place_ct_rois") is None:
            assert any(n.startswith("liver not measured") for n in a.missing)
        else:
            assert {m.roi.source for m in a.measurements if m.roi and m.roi.name == "liver"} == {"automatic"}
        assert not any(m.marker == "ecv_tumor" for m in a.measurements)  # no tumor ROI: nothing guessed
        assert (a.out_dir / "sr.dcm").exists() and dciodvfy(a.out_dir / "sr.dcm")[0] == []
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_without_a_reader_annotation_automatic_liver_and_aorta_rois_give_liver_ecv():
    if placer("place_ct_rois") is None:
        pytest.skip("no automatic ROI placement in this installation")
    root = scratch_dir("pipe-auto")
    try:
        store, truth, (study,) = phantom_store(root, StudySpec(kind="cect", seed=11, slices=12, matrix=64, noise_sd=2.0))
        add_labs(store, truth, [("hct", 40, "%", -2.0)])
        a = analyze_study(store, study)
        liver = by_marker(a, "ecv_liver")
        assert liver.roi.source == "automatic" and liver.roi.label is None  # the mean of the three ROIs
        labels = {m.roi.label for m in a.measurements if m.marker == "liver_hu_equilibrium"}
        assert labels == {"liver right anterior", "liver right posterior", "liver left lateral"}  # paper 001
        assert abs(liver.value - 100 * truth.roi("liver")["ecv"]) <= 0.5
        assert not any(m.marker == "ecv_tumor" for m in a.measurements)
        assert (a.out_dir / "ecv_map.dcm").exists()  # over the automatic liver ROIs
        # the study has a portal venous phase: its veins were avoided too, and the SR's notes say so
        assert "liver ROIs placed clear of the veins seen in the portal venous phase (registered)" in a.missing
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_dect_nic_ecv_nicap_lambda_against_truth_and_nic_without_hct(registration_threads):
    root = scratch_dir("pipe-dect")
    threads = registration_threads
    try:
        store, truth, (study,) = phantom_store(
            root, StudySpec(kind="dect", seed=4, slices=12, matrix=64, noise_sd=2.0, seg_phase="equilibrium",
                            equilibrium_delay_s=120.0))  # paper 000's "equilibrium phase (2 minutes)"
        a = analyze_study(store, study)
        # every phase the markers need was registered ahead, in the background, while the ROIs were read
        assert threads and all(t.startswith("register") for t in threads), threads
        nic = by_marker(a, "nic_tumor")
        want = truth.roi("tumor")["nic_equilibrium"]
        assert abs(nic.value - want) / want <= 0.02
        ecv = by_marker(a, "ecv_tumor_iodine")
        assert ecv.value is None and "hct" in ecv.reason  # no HCT: ECV missing, NIC still reported
        want = 100 * truth.roi("tumor")["nic_arterial"]
        assert abs(by_marker(a, "nic_ap_tumor").value - want) / want <= 0.02
        want = truth.roi("tumor")["phases"]["arterial"]["lambda_hu"]
        assert abs(by_marker(a, "lambda_hu_tumor").value - want) / want <= 0.02
        add_labs(store, truth, [("hct", 100 * truth.data["hct"], "%", -3.0)])
        a = analyze_study(store, study)
        ecv = by_marker(a, "ecv_tumor_iodine")
        assert abs(100 * ecv.value - 100 * truth.roi("tumor")["ecv"]) <= 0.5 and ecv.unit == "1"
        cards = {r["card_id"]: r for r in a.model_results}
        assert cards["p000-ecv-cutoff"]["status"] == "evaluated"
        assert cards["p002-nicap-cutoff"]["status"] == "evaluated"
        for p in a.files:
            assert dciodvfy(p)[0] == [], p.name
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_mr_follow_up_paired_with_baseline_and_nomogram():
    root = scratch_dir("pipe-mr")
    try:
        store, truth, (base, follow) = phantom_store(
            root, StudySpec(kind="mr", seed=5, slices=10, matrix=64, noise_sd=2.0, seg_phase="t2"))
        a = analyze_study(store, base)
        assert any("reported as a baseline" in n for n in a.missing)
        want = truth.roi("tumor", 0)["t2_ratio"]
        assert abs(by_marker(a, "t2_sir_tumor").value - want) / want <= 0.02
        # NLR for paper 003 from one draw in the 14 days before the baseline MRI (issue 16 point 1): 3 days
        # before it NLR = 4.2 / 2.1 = 2.0; the draw a day before the follow-up (post-treatment, NLR 8) is not used
        add_labs(store, truth, [("neutrophils", 4.2, "10*9/L", -72), ("lymphocytes", 2.1, "10*9/L", -72),
                                ("neutrophils", 8.0, "10*9/L", 24 * 7 * 8 - 24), ("lymphocytes", 1.0, "10*9/L",
                                                                                  24 * 7 * 8 - 24)])
        b = analyze_study(store, follow)
        assert any("measured as its baseline: 56 days before the follow-up: within paper 003's 56-70 days" in n
                   for n in b.missing), b.missing
        for study_index, suffix in ((1, ""), (0, "_baseline")):
            rois = truth.roi("tumor", study_index)
            t2 = by_marker(b, f"t2_sir_tumor{suffix}")
            assert abs(t2.value - rois["t2_ratio"]) / rois["t2_ratio"] <= 0.02, (suffix, t2.value)
            adc = by_marker(b, f"adc_mean_tumor{suffix}")
            assert abs(adc.value - rois["adc"] / 1000) / (rois["adc"] / 1000) <= 0.02, (suffix, adc.value)
            assert adc.unit == "10*-3.mm2/s"
        p003 = next(r for r in b.model_results if r["card_id"] == "p003-nomogram")
        assert p003["status"] == "evaluated", p003["reasons"]
        assert p003["inputs_used"]["nlr"]["value"] == pytest.approx(2.0)
        assert p003["inputs_used"]["t2_sir_post"]["value"] == by_marker(b, "t2_sir_tumor").value
        assert "p002-nomogram" not in {r["card_id"] for r in b.model_results}
        # issue 16 point 9: the baseline's values in a group of their own, each saying its lesion and level
        # (the baseline's ROIs are not in this SR's SEG)
        base_t2 = by_marker(b, "t2_sir_tumor_baseline")
        assert base_t2.notes[0].startswith("baseline study: lesion 1 of 1 (") and "ROI level series " in base_t2.notes[0]
        sr = analysis_sr(b.out_dir / "sr.dcm")      # the role groups are in the results SR
        idents = [i.TextValue for i in walk(sr.ContentSequence)
                  if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"]
        assert "Tumor, baseline study (reader ROIs)" in idents and "Tumor (reader)" in idents
        for p in b.files:
            assert dciodvfy(p)[0] == [], p.name
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_mr_follow_up_outside_paper_003s_window_is_not_paired():
    """Issue 16 point 1: a follow-up 12 weeks (84 days) after the earlier MR study is outside paper 003's
    56-70 days (+ the default site tolerance of 7 = 77): not paired, said with the dates, no post-treatment input."""
    root = scratch_dir("pipe-mr12")
    try:
        store, truth, (base, follow) = phantom_store(
            root, StudySpec(kind="mr", seed=6, slices=8, matrix=48, noise_sd=2.0, seg_phase="t2", followup_weeks=12))
        b = analyze_study(store, follow)
        base_date, follow_date = (dt.date.fromisoformat(s["study_date"][:10]) if "-" in s["study_date"]
                                  else dt.datetime.strptime(s["study_date"], "%Y%m%d").date()
                                  for s in truth.data["studies"])
        assert (follow_date - base_date).days == 84
        note = next(n for n in b.missing if n.startswith("baseline not paired for paper 003"))
        assert f"this study is of {follow_date.isoformat()}" in note and f"MR study of {base_date.isoformat()}" in note
        assert "84 days before the follow-up: more than the window's 77" in note
        assert not [m for m in b.measurements if m.marker.endswith("_baseline")]
        p003 = next(r for r in b.model_results if r["card_id"] == "p003-nomogram")
        assert p003["status"] == "not_evaluated"
        assert any("not a follow-up" in r for r in p003["reasons"])
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)



def test_analyze_cli_stores_a_folder_and_writes_the_outputs(tmp_path):
    import subprocess
    import sys

    from conftest import NodeProcess
    from hccnode.phantom import generate

    generate(StudySpec(kind="cect", seed=9, slices=8, matrix=48, noise_sd=2.0, seg_phase="equilibrium"),
             tmp_path / "in")
    (tmp_path / "node").mkdir()
    node = NodeProcess(tmp_path / "node")  # its configuration and data directory; not started
    r = node.cli("analyze", "--dicom-dir", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress",
                 timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ecv_tumor [tumor Tumor, reader]: not measured" in r.stdout and "tumor_diameter" in r.stdout
    assert {"seg.dcm", "sr.dcm", "summary.dcm", "summary.pdf", "summary.png"} <= {p.name for p in (tmp_path / "out").iterdir()}
    store = node.store()
    rows = store.query("SELECT DISTINCT calling_ae FROM instances")
    assert [r["calling_ae"] for r in rows] == ["ANALYZE"]  # stored through the spool, as a C-STORE would be
    study = store.query("SELECT study_uid FROM studies")[0]["study_uid"]
    again = node.cli("analyze", study, "--no-progress", timeout=300)
    assert again.returncode == 0 and again.stdout.count("not measured") == r.stdout.count("not measured")
    usage = subprocess.run([sys.executable, "-m", "hccnode", "-c", str(node.config_path), "analyze"],
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "STUDY_UID or --dicom-dir" in usage.stderr
    bad = node.cli("analyze", study, "--no-progress", "--treatment-start", "12/01/2026", timeout=60)
    assert bad.returncode == 2 and "--treatment-start: treatment start '12/01/2026' is not a date (YYYY-MM-DD)" in bad.stderr
    assert "Traceback" not in bad.stderr
    store.close()
