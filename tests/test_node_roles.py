"""`hccnode serve --role ...` on one PostgreSQL (tests/pg_support.py) and one shared data directory:
1 receiver, 2 workers and 1 forwarder as separate processes on loopback; a phantom CECT study
(4 series of 10 slices of 64² pixels) sent by dcmtk storescu to the receiver, analysed once by one
of the workers, its outputs (those the job records) forwarded by the forwarder to a real Orthanc. Each test costs about
40 s on 2 cores (PostgreSQL database, Orthanc, four node starts, one or two analyses)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import free_port, need, port_open, wait_until
from pipeline_support import scratch_dir

from hccnode.phantom import StudySpec, generate

pytestmark = pytest.mark.network


def _site(node_factory, pg_url, orthanc, shared):
    """The four processes' configurations: same data directory and database, own ports."""
    common = dict(node={"data_dir": str(shared)}, store={"url": pg_url},
                  forward={"destinations": [orthanc.destination]}, worker={"processes": 1, "lease_seconds": 10.0})
    nodes = {}
    for name in ("receiver", "worker1", "worker2", "forwarder"):
        n = node_factory(name, hl7={"enabled": True, "port": free_port()}, **common)
        n.data_dir = shared
        nodes[name] = n
    return nodes


def _start(node, role: str):
    node.start(wait=False, role=role)
    wait_until(lambda: "node.ready" in node.log() or node.proc.poll() is not None, 60, what=f"{role} ready")
    assert node.proc.poll() is None, node.log()[-3000:]
    return node


def _send_phantom(root, receiver) -> list[str]:
    generate(StudySpec(kind="cect", seed=21, slices=10, matrix=64, noise_sd=2.0, seg_phase="equilibrium"),
             root / "phantom")
    files = sorted(str(p) for p in (root / "phantom").rglob("*.dcm"))
    sent = subprocess.run([need("storescu"), "-R", "-aec", "HCCNODE", "127.0.0.1", str(receiver.port), *files],
                          capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    return files


def _outputs_delivered(store, orthanc) -> set[str]:
    """Wait until the job is finished and the outbox holds nothing to send; the SOP UIDs sent."""
    wait_until(lambda: store.query("SELECT 1 FROM jobs WHERE state IN ('done', 'failed')"), 240, interval=0.5,
               what="analysis finished")
    wait_until(lambda: store.query("SELECT 1 FROM outbox") and not store.query(
        "SELECT 1 FROM outbox WHERE state IN ('pending', 'sending')"), 120, interval=0.5, what="outputs sent")
    return {r["sop_uid"] for r in store.query("SELECT sop_uid FROM outbox WHERE state = 'sent'")}


def test_receiver_workers_and_forwarder_as_separate_processes(node_factory, pg_url, orthanc):
    root = scratch_dir("roles")
    try:
        nodes = _site(node_factory, pg_url, orthanc, root / "shared")
        receiver = _start(nodes["receiver"], "receiver")
        assert receiver.echo_ok() and port_open(receiver.cfg["hl7"]["port"])
        files = _send_phantom(root, receiver)
        store = receiver.store()
        assert store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == len(files)
        assert not store.query("SELECT 1 FROM jobs")   # a receiver runs no watcher

        workers = [_start(nodes["worker1"], "worker"), _start(nodes["worker2"], "worker")]
        forwarder = _start(nodes["forwarder"], "forwarder")
        for n in (*workers, forwarder):  # no DICOM or HL7 listener outside the receiver
            assert not port_open(n.port) and not port_open(n.cfg["hl7"]["port"])

        sent = _outputs_delivered(store, orthanc)
        (job,) = store.query("SELECT * FROM jobs")
        assert job["state"] == "done" and job["attempts"] == 1
        outputs = set(json.loads(job["result"])["output_uids"])
        assert outputs
        analysed = [n for n in workers if "pipeline.done" in n.log()]
        assert len(analysed) == 1
        assert "pipeline." not in receiver.log() and "pipeline." not in forwarder.log()
        outbox = store.query("SELECT sop_uid, state FROM outbox")
        assert len(outbox) == len(outputs) and sent == outputs    # each output queued and sent once
        assert "outbox.sent" in forwarder.log() and not any("outbox.sent" in n.log() for n in (receiver, *workers))
        assert orthanc.sop_uids() == outputs and len(orthanc.get("/instances")) == len(outputs)
        store.close()

        for n in (receiver, *workers, forwarder):
            n.stop()
        verified = receiver.cli("audit", "verify")
        assert verified.returncode == 0 and "audit log intact" in verified.stdout, verified.stdout + verified.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_worker_killed_mid_analysis_leaves_the_study_to_the_other(node_factory, pg_url, orthanc, kill_landed):
    root = scratch_dir("roles-kill")
    try:
        nodes = _site(node_factory, pg_url, orthanc, root / "shared")
        receiver = _start(nodes["receiver"], "receiver")
        _send_phantom(root, receiver)
        store = receiver.store()
        forwarder = _start(nodes["forwarder"], "forwarder")
        workers = [_start(nodes["worker1"], "worker"), _start(nodes["worker2"], "worker")]

        running = wait_until(lambda: store.query("SELECT * FROM jobs WHERE state = 'running' AND lease_owner IS NOT NULL"),
                             120, interval=0.05, what="a worker to take the job")[0]
        pid = int(running["lease_owner"].split(":")[1])
        (victim,) = [n for n in workers if n.proc.pid == pid]
        (survivor,) = [n for n in workers if n is not victim]
        victim.kill9()
        at_kill = store.query("SELECT state FROM jobs")[0]["state"]
        kill_landed(f"job {at_kill} when its worker was killed; the analysis had "
                    f"{'' if 'pipeline.done' in victim.log() else 'not '}finished")

        sent = _outputs_delivered(store, orthanc)
        (job,) = store.query("SELECT * FROM jobs")
        assert job["state"] == "done"
        outputs = set(json.loads(job["result"])["output_uids"])
        finishers = [n for n in workers if "job.done" in n.log()]
        assert len(finishers) == 1
        if job["attempts"] == 2:           # the kill landed before the job was recorded done
            assert finishers == [survivor] and "job.lease_taken_back" in survivor.log()
        else:
            assert job["attempts"] == 1 and finishers == [victim]
        # Every output in Orthanc once (a rerun's outputs carry the same UIDs), nothing left to send.
        assert outputs and orthanc.sop_uids() == sent == outputs and len(orthanc.get("/instances")) == len(outputs)
        assert not store.query("SELECT 1 FROM outbox WHERE state <> 'sent'")
        store.close()

        for n in (receiver, survivor, forwarder):
            n.stop()
        verified = receiver.cli("audit", "verify")
        assert verified.returncode == 0 and "audit log intact" in verified.stdout, verified.stdout + verified.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
