"""The node over real loopback associations, with dcmtk's echoscu and storescu as clients."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from conftest import need, wait_until
from dicomgen import PATIENT_ID, PATIENT_NAME, ct_series
from node_support import (WATCHER_HELD, content_sha, dataset_bytes, echoscu, release_watcher, sop_of, store_responses,
                          storescu, study_seqs)

pytestmark = pytest.mark.network


def test_dcmtk_echo_and_store_are_durable_indexed_and_queued(node_factory, tmp_path):
    node = node_factory(study=WATCHER_HELD).start()
    assert echoscu(node).returncode == 0
    files = ct_series(tmp_path / "in", n=20)
    r = storescu(node, files)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("Received Store Response (Success)") == 20

    store = node.store()
    rows = {r["sop_uid"]: r for r in store.query("SELECT * FROM instances")}
    assert len(rows) == 20
    for f in files:
        row = rows[sop_of(f)]
        spooled = node.data_dir / row["path"]
        assert spooled.exists()
        assert content_sha(spooled) == content_sha(f)      # the dataset is stored as it came
        assert row["modality"] == "CT" and row["rows"] == 64 and row["calling_ae"] == "STORESCU"
        assert row["image_type"] == "ORIGINAL\\PRIMARY\\AXIAL"
        assert row["acquisition_time"] and row["image_position"] and row["rescale_intercept"] == -1024
    assert pydicom.dcmread(spooled).file_meta.SourceApplicationEntityTitle == "STORESCU"
    study = store.query("SELECT * FROM studies")[0]
    assert study["patient_key"] and PATIENT_ID not in study["patient_key"]
    assert store.query("SELECT * FROM jobs") == []         # not quiet for stable_seconds yet: not queued

    release_watcher(node)                                  # the whole study in the index: one job
    wait_until(lambda: store.query("SELECT * FROM jobs WHERE state = 'done'"), 20, what="stable job")
    job = store.query("SELECT * FROM jobs")
    assert len(job) == 1 and job[0]["reason"] == "stable" and job[0]["attempts"] == 1
    assert job[0]["study_seq"] == study_seqs(store)[study["study_uid"]]   # it analysed all 20 instances
    result = json.loads(job[0]["result"])                 # analysed: a study it cannot measure says why
    assert result["study_uid"] == study["study_uid"] and result["missing"] and result["out_dir"]
    log = node.log()
    assert PATIENT_NAME.split("^")[0] not in log and PATIENT_ID not in log and "19600101" not in log

    history = node.cli("audit", "show", study["study_uid"])
    assert history.returncode == 0
    assert history.stdout.count("instance.stored") == 20
    for event in ("job.queued", "job.started", "job.done"):
        assert event in history.stdout
    verify = node.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    events = [r["event"] for r in store.query("SELECT event FROM audit ORDER BY id")]
    assert events[:2] == ["config.loaded", "node.started"] and "association.accepted" in events


def test_resend_is_idempotent_and_changed_content_replaces_and_requeues(node_factory, tmp_path):
    node = node_factory(study=WATCHER_HELD).start()
    files = ct_series(tmp_path / "in", n=3)
    assert storescu(node, files).returncode == 0
    store = node.store()
    release_watcher(node)
    wait_until(lambda: store.query("SELECT * FROM jobs WHERE state = 'done'"), 20, what="first job")
    (first,) = store.query("SELECT * FROM jobs")
    assert first["study_seq"] == study_seqs(store)[first["study_uid"]]

    assert storescu(node, files).returncode == 0          # same content again: nothing changes
    assert len(store.query("SELECT * FROM instance_versions WHERE outcome = 'duplicate'")) == 3
    # The study's seq did not move, so there is nothing for the watcher to queue, ever.
    assert study_seqs(store)[first["study_uid"]] == first["study_seq"]
    assert len(store.query("SELECT * FROM jobs")) == 1

    ds = pydicom.dcmread(files[0])
    ds.SeriesDescription = "CORRECTED"
    ds.save_as(files[0])
    assert storescu(node, files[:1]).returncode == 0
    sop = str(ds.SOPInstanceUID)
    versions = store.query("SELECT * FROM instance_versions WHERE sop_uid = ? ORDER BY id", (sop,))
    assert [v["outcome"] for v in versions if v["outcome"] != "duplicate"] == ["replaced", "stored"]
    assert all((node.data_dir / v["path"]).exists() for v in versions)  # the older file is kept
    assert store.query("SELECT series_description FROM instances WHERE sop_uid = ?", (sop,))[0][
        "series_description"] == "CORRECTED"
    jobs = wait_until(lambda: (j := store.query("SELECT * FROM jobs WHERE state = 'done' ORDER BY id")) and
                      len(j) == 2 and j, 20, what="re-queued job")
    assert jobs[1]["reason"] == "requeue" and jobs[1]["study_seq"] > jobs[0]["study_seq"]


def test_broken_datasets_get_failure_status_are_quarantined_and_node_keeps_serving(node_factory, tmp_path):
    node = node_factory().start()
    good, no_study, truncated_src = ct_series(tmp_path / "in", n=3)
    ds = pydicom.dcmread(no_study)
    del ds.StudyInstanceUID                               # dcmtk sends it; we cannot file it
    ds.save_as(no_study)
    r = storescu(node, [no_study])
    assert "Error: CannotUnderstand" in r.stdout + r.stderr   # dcmtk names status 0xC000
    assert "missing StudyInstanceUID" in node.log()

    # A truncated stream, sent raw by a real association (dcmtk refuses to send such a file).
    raw = truncated_src.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[:-4000])
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="RAWSCU")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="HCCNODE")
    assert assoc.is_established
    rsp = assoc.send_c_store(truncated)
    assoc.release()
    assert rsp.Status == 0xC000 and "truncated" in rsp.ErrorComment

    store = node.store()
    q = store.query("SELECT * FROM quarantine ORDER BY id")
    assert [row["status"] for row in q] == [0xC000, 0xC000]
    kept = node.data_dir / q[1]["path"]
    assert dataset_bytes(kept) == dataset_bytes(truncated)  # the raw bytes as received, nothing lost
    assert store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0

    assert storescu(node, [good]).returncode == 0         # the next association is served
    assert store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 1


def test_kill9_while_receiving_loses_nothing_acknowledged_and_runs_the_job_once(node_factory, tmp_path, kill_landed):
    """Whenever the kill lands (mid-instance, between instances, after the send), every
    acknowledged instance is stored and indexed after the restart, partials are cleaned, and the
    study is analysed once."""
    node = node_factory(worker={"processes": 1, "lease_seconds": 5.0}, study=WATCHER_HELD).start()
    files = ct_series(tmp_path / "in", n=200, size=128)
    sops = {str(f): sop_of(f) for f in files}
    log_path = tmp_path / "storescu.log"
    with open(log_path, "w") as out:
        sender = subprocess.Popen([need("storescu"), "-v", "-aec", "HCCNODE", "127.0.0.1", str(node.port),
                                   *map(str, files)], stdout=out, stderr=subprocess.STDOUT)
        store = node.store()
        wait_until(lambda: store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] >= 40, 60,
                   interval=0.02, what="some instances stored")
        node.kill9()
        sender.wait(60)
    acked = [sops[f] for f, answer in store_responses(log_path.read_text()) if answer == "Success"]
    tmp = node.data_dir / "spool" / ".tmp"
    partials = len(list(tmp.rglob("*.part"))) if tmp.is_dir() else 0
    kill_landed(f"{len(acked)} of {len(files)} instances acknowledged, "
                f"{'after the send had ended' if sender.returncode == 0 else 'the send cut short'}, "
                f"{partials} partial file(s) in the spool")
    if sender.returncode == 0:
        assert len(acked) == len(files)                   # a send that ended had every instance answered
    assert store.query("SELECT * FROM jobs") == []         # nothing queued while instances arrived

    release_watcher(node)
    store = node.store()
    indexed = {r["sop_uid"]: r for r in store.query("SELECT * FROM instances")}
    missing = [s for s in acked if s not in indexed]
    assert not missing, f"{len(missing)} acknowledged instances lost"
    for s in acked:
        assert (node.data_dir / indexed[s]["path"]).exists()
    assert not list(tmp.rglob("*.part"))   # unacknowledged partials cleaned (the killed process's directory too)

    wait_until(lambda: store.query("SELECT * FROM jobs WHERE state = 'done'"), 30, what="stable job")
    jobs = store.query("SELECT * FROM jobs")
    assert len(jobs) == 1 and jobs[0]["state"] == "done" and jobs[0]["attempts"] == 1
    # It analysed the study as the restarted node holds it: nothing is left for the watcher to queue.
    assert jobs[0]["study_seq"] == study_seqs(store)[jobs[0]["study_uid"]]


def test_need_fails_under_ci_and_skips_otherwise(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        need("hccnode-no-such-tool")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        need("hccnode-no-such-tool")


def test_eight_concurrent_associations_are_all_stored(node_factory, tmp_path):
    node = node_factory().start()
    series = [ct_series(tmp_path / f"s{i}", n=20, seed=100 + i) for i in range(8)]
    senders = [subprocess.Popen([need("storescu"), "-v", "-aet", f"SCU{i}", "-aec", "HCCNODE", "127.0.0.1",
                                 str(node.port), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i, files in enumerate(series)]
    outputs = [p.communicate(timeout=120)[0].decode(errors="replace") for p in senders]
    codes = [p.returncode for p in senders]
    assert codes == [0] * 8, [o for o, c in zip(outputs, codes) if c] + [node.log()[-3000:]]
    for out in outputs:                                    # each association: every instance answered success
        assert [a for _, a in store_responses(out)] == ["Success"] * 20

    log = node.log()                                       # the associations really were open at once
    open_now, most = 0, 0
    for line in log.splitlines():
        if re.search(r"association\.accepted calling_ae=SCU\d", line):
            open_now += 1
            most = max(most, open_now)
        elif re.search(r"association\.(released|aborted) calling_ae=SCU\d", line):
            open_now -= 1
    assert most >= 2, "the eight associations never overlapped"

    store = node.store()
    assert store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 160
    studies = {r["study_uid"] for r in store.query("SELECT study_uid FROM studies")}
    assert len(studies) == 8
    for i, files in enumerate(series):                     # nothing crossed between associations
        rows = store.query("SELECT calling_ae FROM instances WHERE study_uid = ?",
                           (str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID),))
        assert [r["calling_ae"] for r in rows] == [f"SCU{i}"] * 20
    # A study may become stable mid-send on a loaded machine (a gap over stable_seconds) and be
    # queued again by its later instances; what matters is that each ends analysed.
    wait_until(lambda: {j["study_uid"] for j in store.query("SELECT study_uid FROM jobs")} == studies, 30,
               what="eight stable studies queued")
    wait_until(lambda: not store.query("SELECT 1 FROM jobs WHERE state != 'done'")
               and len(store.query("SELECT DISTINCT study_uid FROM jobs WHERE state = 'done'")) == 8,
               120, what="every study's jobs done")
    analysed = store.query("SELECT study_uid, out_dir FROM analyses")      # each study analysed, its SR written
    assert {a["study_uid"] for a in analysed} == studies
    assert all((node.data_dir / a["out_dir"] / "sr.dcm").is_file() for a in analysed)


def test_a_ninth_association_gets_a_transient_rejection_until_one_closes(node_factory):
    from pynetdicom.sop_class import Verification

    node = node_factory().start()
    held = []
    for i in range(8):
        ae = AE(ae_title=f"HOLD{i}")
        ae.add_requested_context(Verification)
        a = ae.associate("127.0.0.1", node.port, ae_title="HCCNODE")
        assert a.is_established
        held.append(a)
    ninth = echoscu(node, "NINTH")
    assert ninth.returncode != 0 and "Local Limit Exceeded" in ninth.stdout + ninth.stderr
    held.pop().release()
    wait_until(lambda: echoscu(node, "NINTH").returncode == 0, 10, what="a free slot")
    for a in held:
        a.release()
    assert re.search(r"association\.rejected .*calling_ae=NINTH .*association limit \(8\)", node.log())


def test_two_receiver_processes_share_the_port_and_concurrent_senders_store_each_instance_once(node_factory, tmp_path):
    """[node] receiver_processes = 2: six storescu senders at once, then one while the node's own
    process is stopped (SIGSTOP: only the other receiver process can accept), then the other one
    killed -9 and started again by the node. Every acknowledged instance is indexed once, with one
    audit row, and the chain verifies. Costs about 15 s."""
    node = node_factory(node={"receiver_processes": 2}, study=WATCHER_HELD).start()
    other = lambda: [int(p) for p in re.findall(r"receiver\.started pid=(\d+)", node.log())]  # noqa: E731
    wait_until(lambda: len(other()) == 1, 60, what="the second receiver process")
    series = [ct_series(tmp_path / f"in{i}", n=15, seed=i) for i in range(7)]
    senders = [subprocess.Popen([need("storescu"), "-v", "-aet", f"SCU{i}", "-aec", "HCCNODE", "127.0.0.1",
                                 str(node.port), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for i, files in enumerate(series[:6])]
    outputs = [s.communicate(timeout=120)[0] for s in senders]
    os.kill(node.proc.pid, signal.SIGSTOP)
    try:
        alone = storescu(node, series[6], aet="SCU6")   # answered by the other process, on the same port
    finally:
        os.kill(node.proc.pid, signal.SIGCONT)
    outputs.append(alone.stdout + alone.stderr)
    acked = [f for out in outputs for f, response in store_responses(out) if response == "Success"]
    assert len(acked) == 7 * 15, "every instance acknowledged"

    first = other()[0]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(other()) == 2, 30, what="the killed receiver process started again")
    assert re.search(rf"receiver\.exited .*pid={first} ", node.log())
    assert storescu(node, series[0][:1], aet="AGAIN").returncode == 0   # a resend: a duplicate, kept once

    store = node.store()
    indexed = {r["sop_uid"]: r["n"] for r in store.query("SELECT sop_uid, COUNT(*) AS n FROM instances GROUP BY sop_uid")}
    assert indexed == {sop_of(f): 1 for f in acked}
    versions = store.query("SELECT outcome, COUNT(*) AS n FROM instance_versions GROUP BY outcome")
    assert {r["outcome"]: r["n"] for r in versions} == {"stored": 105, "duplicate": 1}
    audited = store.query("SELECT event, COUNT(*) AS n FROM audit WHERE event LIKE 'instance.%' GROUP BY event")
    assert {r["event"]: r["n"] for r in audited} == {"instance.stored": 105, "instance.duplicate": 1}
    assert "instance.failed" not in node.log()
    node.stop()
    verified = node.cli("audit", "verify")
    assert verified.returncode == 0 and "audit log intact" in verified.stdout, verified.stdout + verified.stderr
