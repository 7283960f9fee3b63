"""Paper 003's treatment start as a stored input (issue 16 point 1, gaps a and b): set per study
(`hccnode studies treatment-start`, `hccnode.store.studies.set_treatment_start`), read by every
analysis (the workers' too), recorded with the analysis' inputs, used by `audit reverify`, and a
new date re-queues the analysed studies it changes, as a new lab result does.

Expected values: paper 003, Materials and methods, Patients: labs "obtained within 2 weeks prior to
treatment" = the 336 h before the treatment start; NLR = neutrophils / lymphocytes."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta

import pydicom
import pytest
from conftest import NodeProcess
from pipeline_support import add_labs, phantom_store, scratch_dir
from report_support import analysis_sr, walk

from hccnode.phantom import StudySpec
from hccnode.store import analyses, studies
from hccnode.store.db import Store
from hccnode.audit.reverify import REPRODUCED, reverify
from hccnode.worker import JobSettings, run_job


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path)
    with s.tx() as c:
        for uid in ("1.1", "1.9", "2.1"):   # baseline, its follow-up, a CT study
            c.execute("INSERT INTO studies (study_uid, study_date, first_received, last_received, seq)"
                      " VALUES (?, '20260110', 0, 0, 1)", (uid,))
    yield s
    s.close()


def _jobs(store):
    return [(r["study_uid"], r["reason"]) for r in store.query("SELECT study_uid, reason FROM jobs ORDER BY id")]


def test_a_new_treatment_start_requeues_the_analyses_it_changes_and_only_those(store):
    start = datetime(2026, 1, 20)
    with pytest.raises(LookupError, match="study 9.9 is not in the node's store"):
        studies.set_treatment_start(store, "9.9", start, "test")
    # never analysed: stored, nothing to re-queue (the first analysis reads it)
    done = studies.set_treatment_start(store, "1.1", start, "test")
    assert done.changed and done.requeued == () and studies.treatment_start(store, "1.1") == start
    # the follow-up analysed with no date, paired with 1.1; the CT study matched no paper-003 labs
    analyses.record(store, "1.9", None, "9.1", store.data_dir / "o1", [], {
        studies.TREATMENT_START: None, studies.TREATMENT_START_STUDY: None, studies.BASELINE_STUDY: "1.1"})
    analyses.record(store, "2.1", None, "9.2", store.data_dir / "o2", [], {})
    assert studies.effective_treatment_start(store, "1.9", "1.1") == (start, "1.1")   # the baseline's date
    later = datetime(2026, 1, 22)
    done = studies.set_treatment_start(store, "1.1", later, "test")
    assert [uid for uid, _ in done.requeued] == ["1.9"] and _jobs(store) == [("1.9", "treatment_start")]
    # the same date again changes nothing
    assert studies.set_treatment_start(store, "1.1", later, "test") .changed is False
    # an analysis that used the date now in effect is not stale; clearing the date makes it so
    analyses.record(store, "1.9", None, "9.3", store.data_dir / "o3", [], {
        studies.TREATMENT_START: later.isoformat(), studies.TREATMENT_START_STUDY: "1.1", studies.BASELINE_STUDY: "1.1"})
    assert studies.stale_analyses(store, "1.1") == []
    studies.set_treatment_start(store, "1.1", None, "test")
    assert studies.treatment_start(store, "1.1") is None and studies.stale_analyses(store, "1.1") == ["1.9"]
    assert studies.set_treatment_start(store, "2.1", start, "test").requeued == ()     # CT: no paper-003 labs
    events = store.query("SELECT details FROM audit WHERE event = 'study.treatment_start' ORDER BY id")
    assert len(events) == 4


def test_the_date_format_is_named():
    assert studies.parse_treatment_start("2026-01-20") == datetime(2026, 1, 20)
    with pytest.raises(ValueError, match=r"treatment start '20/01/2026' is not a date \(YYYY-MM-DD\)"):
        studies.parse_treatment_start("20/01/2026")


def test_the_worker_analysis_uses_the_stored_date_and_reverify_the_recorded_one():
    """One MR pair 8 weeks apart (3 analyses of an 8 x 48 x 48 phantom, one through `hccnode analyze`).
    NLR draws: 3 days before the baseline MRI 4.2 / 2.1 = 2.0; 5 days after it 6.0 / 1.5 = 4.0. Without a
    treatment start the labs are the 14 days before the baseline MRI: NLR 2.0. With the start set on the
    baseline to 7 days after the baseline MRI (day 7, 00:00), the 336 h before it hold both draws (day -3
    and day 5); the nearer is day 5: NLR 4.0."""
    root = scratch_dir("treatment-start")
    try:
        store, truth, (base, follow) = phantom_store(
            root, StudySpec(kind="mr", seed=5, slices=8, matrix=48, noise_sd=2.0, seg_phase="t2"))
        add_labs(store, truth, [("neutrophils", 4.2, "10*9/L", -72), ("lymphocytes", 2.1, "10*9/L", -72),
                                ("neutrophils", 6.0, "10*9/L", 120), ("lymphocytes", 1.5, "10*9/L", 120)])
        node = NodeProcess(root)   # its data directory is root/data, the phantom store's
        first = node.cli("analyze", follow, "--no-progress", timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr
        # issue 16 point 2: the CLI shows each term and the direction conflict too
        assert "term: neutrophil-to-lymphocyte ratio = 2; cutoff >= 4.41: not met; published OR 0.162" in first.stdout
        assert "Direction conflict: the card reads Table 4's odds ratios" in first.stdout
        assert analyses.latest(store, follow)["inputs"] == {
            "treatment_start": None, "treatment_start_study": None, "baseline_study": base}

        baseline_day = datetime.fromisoformat(truth.data["studies"][0]["series"][0]["acquisition_start"]).date()
        start = (baseline_day + timedelta(days=7)).isoformat()
        accession = truth.data["studies"][0]["accession_number"]   # the baseline named by its Accession Number
        r = node.cli("studies", "treatment-start", accession, start)
        assert r.returncode == 0, r.stderr
        assert f"study {base}: treatment start {start}T00:00:00" in r.stdout
        assert f"queued again: study {follow}" in r.stdout      # its date changed: from none to the baseline's
        bad = node.cli("studies", "treatment-start", base, "next monday")
        assert bad.returncode == 2 and "is not a date (YYYY-MM-DD)" in bad.stderr and "Traceback" not in bad.stderr

        (job,) = store.query("SELECT id FROM jobs WHERE study_uid = ? AND reason = 'treatment_start'", (follow,))
        record = run_job(job["id"], JobSettings(str(store.data_dir)))   # the node's worker: no date handed to it
        sr = analysis_sr(f"{record['out_dir']}/sr.dcm")
        params = [i.TextValue for i in walk(sr.ContentSequence) if i.ValueType == "TEXT"
                  and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters" and i.TextValue.startswith("nlr = ")]
        assert params and params[0].startswith("nlr = 4.0 1 ") and f"before treatment start ({start})" in params[0]
        assert analyses.latest(store, follow)["inputs"]["treatment_start"] == f"{start}T00:00:00"
        texts = " ".join(i.TextValue for i in walk(sr.ContentSequence) if i.ValueType == "TEXT")
        assert "does not fit paper 003's time points" not in texts    # 7 days after the baseline MRI: fits

        # the date is changed afterwards: the SR written with the first date is still reproduced
        assert node.cli("studies", "treatment-start", base, "--clear").returncode == 0
        out = reverify(store, pydicom.dcmread(f"{record['out_dir']}/sr.dcm"), record=False)   # finds sr_results.dcm beside it
        assert out.verdict == REPRODUCED, (out.problems, out.notes)
        assert any(f"treatment start as the SR's analysis used it: {start}T00:00:00 (set on study {base})" in n
                   for n in out.notes)
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)

