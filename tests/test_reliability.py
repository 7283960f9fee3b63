"""Reliability suite: a full disk under a running node, and kill -9 while the forwarder sends.

Real parts only: the node is a `hccnode serve` subprocess, the senders are dcmtk's storescu
and a pynetdicom association, the destination is a real Orthanc; loopback only, bounded loops.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from conftest import wait_until
from dicomgen import PATIENT_ID, PATIENT_NAME, ct_series
from hccnode import dicom_status as status
from hccnode.store import outbox
from node_support import (WATCHER_HELD, content_sha, integrity, release_watcher, sop_of, store_responses, storescu,
                          tmpfs, unindexed_spool_files)

pytestmark = pytest.mark.network

SPOOL_FS_SIZE = "16m"
FREE_LEFT = 1_000_000        # bytes left free before the second batch: room for a few instances


def _pynetdicom_store(node, path):
    """One C-STORE from a second kind of client; returns the response dataset."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="HCCNODE")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()


def test_full_spool_disk_refuses_with_out_of_resources_and_recovers_without_restart(node_factory, tmp_path):
    """Uses a real size-limited filesystem (tmpfs) for the node's data directory, spool and index
    alike; where this process may not mount, the kernel's own write error is injected instead by
    a file-size limit on the node process (writes then fail with EFBIG)."""
    files = ct_series(tmp_path / "in", n=40, size=256)        # 131 kB each
    first, rest = files[:10], files[10:]
    # No analysis while the disk is full (its outputs would take the little space left for the
    # ingest): the watcher is held until the last send, after the space is back.
    node = node_factory(study=WATCHER_HELD)
    with tmpfs(node.data_dir, SPOOL_FS_SIZE, fallback="a file-size limit (RLIMIT_FSIZE) on the node process") as mounted:
        try:
            node.start()
            pid = node.proc.pid
            r = storescu(node, first, extra=["-nh"])
            assert [a for _, a in store_responses(r.stdout + r.stderr)] == ["Success"] * 10, r.stderr

            filler = node.data_dir / "filler"
            if mounted:                                          # leave room for a few instances only
                st = os.statvfs(node.data_dir)
                filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - FREE_LEFT))
            else:                                                # no instance fits in one file any more
                soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (16384, hard))

            r = storescu(node, rest, extra=["-nh"])
            answers = store_responses(r.stdout + r.stderr)
            assert len(answers) == len(rest), r.stdout + r.stderr
            refused = [f for f, a in answers if a != "Success"]
            assert refused, "the disk never filled up"
            if mounted:
                assert len(refused) < len(rest), "no instance fitted in the space left"
            assert all(a == "Refused: OutOfResources" for f, a in answers if a != "Success"), answers
            rsp = _pynetdicom_store(node, rest[-1])                # the reason travels in the response
            assert rsp.Status == status.OUT_OF_RESOURCES
            assert rsp.ErrorComment in ("spool disk full", "index disk full", "spool not writable: EFBIG")

            # Success was answered only for what is whole on disk and indexed; nothing else is left.
            store = node.store()
            indexed = {r["sop_uid"]: r for r in store.query("SELECT sop_uid, path FROM instances")}
            acked = first + [Path(f) for f, a in answers if a == "Success"]
            for f in acked:
                row = indexed.get(sop_of(f))
                assert row, f"{f.name} was acknowledged but is not indexed"
                assert content_sha(node.data_dir / row["path"]) == content_sha(f)
            assert len(indexed) == len(acked)                    # nothing refused was indexed
            assert unindexed_spool_files(node) == []             # no partial, temp or orphan files
            assert integrity(node.data_dir / "hccnode.db") == "ok"
            assert node.proc.poll() is None

            if mounted:                                          # space returns
                filler.unlink()
            else:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
            r = storescu(node, files, extra=["-nh"])             # everything again: the stored ones are duplicates
            assert [a for _, a in store_responses(r.stdout + r.stderr)] == ["Success"] * 40, (store_responses(r.stdout + r.stderr), node.log()[-3000:])
            assert node.proc.pid == pid and node.proc.poll() is None   # the same process, never restarted
            indexed = {r["sop_uid"]: r for r in store.query("SELECT sop_uid, path FROM instances")}
            assert set(indexed) == {sop_of(f) for f in files}
            for f in files:
                assert content_sha(node.data_dir / indexed[sop_of(f)]["path"]) == content_sha(f)
            assert unindexed_spool_files(node) == []
            assert integrity(node.data_dir / "hccnode.db") == "ok"
            verify = node.cli("audit", "verify")
            assert verify.returncode == 0, verify.stdout + verify.stderr
            assert store.query("SELECT 1 FROM jobs") == []
            release_watcher(node)
            wait_until(lambda: store.query("SELECT 1 FROM jobs"), 20, what="the study to become a job")
            log = node.log()
            assert "instance.failed" in log
            assert PATIENT_ID not in log and PATIENT_NAME.split("^")[0] not in log   # error paths too
        finally:
            node.stop()


def test_kill9_while_sending_delivers_every_row_exactly_once_after_restart(node_factory, orthanc, tmp_path, kill_landed):
    """Aimed at the second association; wherever the kill lands, every row ends sent and every
    instance is in Orthanc once."""
    files = ct_series(tmp_path / "out", n=120, size=32)     # two associations of 64 and 56
    node = node_factory()
    store = node.store()
    for f in files:
        outbox.enqueue(store, orthanc.destination, f)

    def in_orthanc() -> int:
        return orthanc.get("/statistics")["CountInstances"]

    node.start()
    wait_until(lambda: in_orthanc() >= 80, 60, interval=0.05, what="the forwarder in its second association")
    node.kill9()
    cut = outbox.counts(store)
    leased = cut.get("sending", 0)                     # rows leased by the killed process, mid-association
    kill_landed(f"{in_orthanc()} of {len(files)} instances in Orthanc, {cut.get('sent', 0)} rows marked sent, "
                f"{leased} leased {'mid-association' if leased else '(none: between or after the associations)'}")

    node.start()
    wait_until(lambda: outbox.counts(store) == {"sent": len(files)}, 60, what="every row sent after the restart")
    assert len(orthanc.get("/instances")) == len(files)                          # each instance exactly once
    assert orthanc.sop_uids() == {sop_of(f) for f in files}
    log = node.log()
    if leased:                                         # the dead process's lease is taken back at once
        assert "outbox.lease_taken_back" in log and "holder gone" in log
    assert PATIENT_ID not in log and PATIENT_NAME.split("^")[0] not in log


def test_kill9_during_analysis_completes_the_job_after_restart_with_each_output_once(node_factory, orthanc, tmp_path,
                                                                                      kill_landed):
    """kill -9 of the node (its worker processes with it), aimed at the analysis: after restart a
    job cut mid-analysis is taken back from the dead holder, the job ends done, and every output
    is in Orthanc exactly once (deterministic UIDs: a repeated output is the same instance)."""
    import subprocess

    from conftest import need
    from hccnode.phantom import StudySpec, generate

    truth = generate(StudySpec(kind="cect", seed=41, slices=10, matrix=64, noise_sd=2.0, seg_phase="equilibrium",
                               progress=False), tmp_path / "phantom")
    study_uid = truth.data["studies"][0]["study_instance_uid"]
    node = node_factory(forward={"destinations": [orthanc.destination]}, study=WATCHER_HELD).start()
    store = node.store()
    files = sorted(str(p) for p in (tmp_path / "phantom").rglob("*.dcm"))
    sent = subprocess.run([need("storescu"), "-R", "-aec", "HCCNODE", "127.0.0.1", str(node.port), *files],
                          capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    release_watcher(node)                               # one job, for the whole study

    def job():
        rows = store.query("SELECT state, attempts FROM jobs WHERE study_uid = ?", (study_uid,))
        assert len(rows) <= 1, rows
        return rows[0] if rows else None

    wait_until(lambda: (job() or {}).get("state") in ("running", "done"), 60, interval=0.02,
               what="the analysis to start")
    node.kill9()
    at_kill = job()
    mid_job = at_kill["state"] == "running"             # cut mid-analysis: no outcome recorded
    kill_landed(f"job {at_kill['state']} in attempt {at_kill['attempts']}, outbox {outbox.counts(store)}")
    node.start()
    wait_until(lambda: job()["state"] == "done", 120, what="the job to finish after the restart")
    assert job()["attempts"] == at_kill["attempts"] + mid_job   # a cut attempt is run again, once
    wait_until(lambda: set(outbox.counts(store)) == {"sent"}, 60, what="the outputs sent")
    queued = {r["sop_uid"] for r in store.query("SELECT sop_uid FROM outbox")}
    assert len(queued) == 4           # SEG, ROI SR, results SR, summary (no hematocrit: no ECV map)
    sops = [orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in orthanc.get("/instances")]
    assert sorted(sops) == sorted(queued)               # each output exactly once
    log = node.log()
    if mid_job:
        assert "job.lease_taken_back" in log
    assert truth.data["patient"]["id"] not in log and truth.data["patient"]["name"] not in log
