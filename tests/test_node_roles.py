"""`hccnode serve --role ...` on one PostgreSQL (tests/pg_support.py) and one shared data directory:
receivers, 2 workers and 1 forwarder as separate processes on loopback; phantom CECT studies
sent by dcmtk storescu to the receivers, each analysed once by one of the workers, its outputs (those
the job records) forwarded by the forwarder to a real Orthanc; a worker and a receiver killed. Each test costs about 30-40 s on 2 cores (PostgreSQL database, Orthanc,
four or five node starts, one or two analyses)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pydicom
import pytest
from conftest import free_port, need, port_open, wait_until
from node_support import store_responses
from pipeline_support import scratch_dir

from hccnode.phantom import StudySpec, generate

pytestmark = pytest.mark.network


def _site(node_factory, pg_url, orthanc, shared, names=("receiver", "worker1", "worker2", "forwarder")):
    """The processes' configurations: same data directory and database, own ports."""
    common = dict(node={"data_dir": str(shared)}, store={"url": pg_url},
                  forward={"destinations": [orthanc.destination]}, worker={"processes": 1, "lease_seconds": 10.0})
    nodes = {}
    for name in names:
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


def _storescu(receiver, files, log_path) -> subprocess.Popen:
    out = open(log_path, "w")
    proc = subprocess.Popen([need("storescu"), "-v", "-R", "-aec", "HCCNODE", "127.0.0.1", str(receiver.port), *files],
                            stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc


def test_two_receivers_on_one_spool_take_concurrent_senders_and_each_study_is_analysed_once(
        node_factory, pg_url, orthanc):
    """Two senders at once, one per receiver: study A through receiver 1 only, study B's series
    split between both receivers (one study assembled from two hosts' stores). Costs about 40 s."""
    root = scratch_dir("roles-receivers")
    try:
        nodes = _site(node_factory, pg_url, orthanc, root / "shared",
                      names=("receiver1", "receiver2", "worker1", "worker2", "forwarder"))
        receivers = [_start(nodes["receiver1"], "receiver"), _start(nodes["receiver2"], "receiver")]
        assert all(r.echo_ok() and port_open(r.cfg["hl7"]["port"]) for r in receivers)   # DICOM and HL7
        studies = {}
        for name, seed in (("A", 31), ("B", 32)):
            generate(StudySpec(kind="cect", seed=seed, slices=8, matrix=64, noise_sd=2.0, seg_phase="equilibrium"),
                     root / name)
            series = sorted({p.parent for p in (root / name).rglob("*.dcm")})
            studies[name] = [[str(p) for p in sorted(d.glob("*.dcm"))] for d in series]
        b = studies["B"]
        to_first = [f for s in studies["A"] + b[::2] for f in s]
        to_second = [f for s in b[1::2] for f in s]
        senders = [_storescu(r, files, root / f"send{i}.log")
                   for i, (r, files) in enumerate(zip(receivers, (to_first, to_second)))]
        for i, proc in enumerate(senders):
            assert proc.wait(180) == 0, (root / f"send{i}.log").read_text()[-600:]
        sent = to_first + to_second
        for i, files in enumerate((to_first, to_second)):   # every instance acknowledged by its receiver
            answers = store_responses((root / f"send{i}.log").read_text())
            assert len(answers) == len(files) and all(a == "Success" for _, a in answers)
        assert all("instance.failed" not in r.log() for r in receivers)

        store = receivers[0].store()
        rows = store.query("SELECT sop_uid, path FROM instances")
        assert len(rows) == len(sent) == len({r["sop_uid"] for r in rows})      # each indexed exactly once
        assert {r["sop_uid"] for r in rows} == {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                                                for f in sent}
        assert all((root / "shared" / r["path"]).is_file() for r in rows)
        assert not list((root / "shared" / "spool" / ".tmp").rglob("*.part"))
        assert not store.query("SELECT 1 FROM jobs")   # a receiver runs no watcher

        workers = [_start(nodes["worker1"], "worker"), _start(nodes["worker2"], "worker")]
        forwarder = _start(nodes["forwarder"], "forwarder")
        for n in (*workers, forwarder):  # no DICOM or HL7 listener outside the receivers
            assert not port_open(n.port) and not port_open(n.cfg["hl7"]["port"])
        wait_until(lambda: len(store.query("SELECT 1 FROM jobs WHERE state IN ('done', 'failed')")) == 2, 300,
                   interval=0.5, what="both analyses finished")
        delivered = _outputs_delivered(store, orthanc)
        jobs = store.query("SELECT j.*, s.seq FROM jobs j JOIN studies s ON s.study_uid = j.study_uid")
        assert len(jobs) == 2 == len({j["study_uid"] for j in jobs})            # one job per study
        assert all(j["state"] == "done" and j["attempts"] == 1 and j["study_seq"] == j["seq"] for j in jobs)
        outputs = [u for j in jobs for u in json.loads(j["result"])["output_uids"]]
        assert outputs and len(outputs) == len(set(outputs))
        assert delivered == set(outputs) == orthanc.sop_uids() and len(orthanc.get("/instances")) == len(outputs)
        assert len(store.query("SELECT 1 FROM outbox")) == len(outputs)         # each queued once
        assert sum(n.log().count("pipeline.done") for n in workers) == 2
        assert not any("pipeline." in n.log() for n in (*receivers, forwarder))
        assert "outbox.sent" in forwarder.log() and not any("outbox.sent" in n.log() for n in (*receivers, *workers))
        store.close()

        for n in nodes.values():
            n.stop()
        verified = receivers[0].cli("audit", "verify")
        assert verified.returncode == 0 and "audit log intact" in verified.stdout, verified.stdout + verified.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_receiver_killed_mid_association_loses_nothing_acknowledged_and_the_retry_to_the_other_completes(
        node_factory, pg_url, orthanc, kill_landed):
    """kill -9 of receiver 1 while a study arrives; the sender then sends the whole study to
    receiver 2. Restarting receiver 1 removes the dead process's temporary files and none of the
    live receiver's. Costs about 40 s."""
    root = scratch_dir("roles-receiver-kill")
    try:
        nodes = _site(node_factory, pg_url, orthanc, root / "shared",
                      names=("receiver1", "receiver2", "worker1", "forwarder"))
        first, second = _start(nodes["receiver1"], "receiver"), _start(nodes["receiver2"], "receiver")
        generate(StudySpec(kind="cect", seed=33, slices=16, matrix=64, noise_sd=2.0, seg_phase="equilibrium"),
                 root / "phantom")
        files = sorted(str(p) for p in (root / "phantom").rglob("*.dcm"))
        sops = {f: str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        store = first.store()
        sender = _storescu(first, files, root / "send0.log")
        wait_until(lambda: store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] >= 10, 60, interval=0.02,
                   what="some instances stored")
        dead_pid = first.proc.pid
        first.kill9()
        sender.wait(60)
        acked = [sops[f] for f, answer in store_responses((root / "send0.log").read_text()) if answer == "Success"]
        kill_landed(f"{len(acked)} of {len(files)} instances acknowledged by the killed receiver, "
                    f"{'after the send had ended' if sender.returncode == 0 else 'the send cut short'}")
        indexed = {r["sop_uid"] for r in store.query("SELECT sop_uid FROM instances")}
        assert not [s for s in acked if s not in indexed], "an acknowledged instance was lost"

        retry = _storescu(second, files, root / "send1.log")       # the sender's retry, whole study
        assert retry.wait(180) == 0, (root / "send1.log").read_text()[-600:]
        rows = store.query("SELECT sop_uid FROM instances")
        assert len(rows) == len(files) and {r["sop_uid"] for r in rows} == set(sops.values())

        tmp = root / "shared" / "spool" / ".tmp"
        nodes["receiver1"].start(role="receiver")   # same host: the dead pid's directory goes, the live one stays
        assert not [d for d in tmp.iterdir() if d.name.endswith(f".{dead_pid}")]
        assert [d for d in tmp.iterdir() if d.name.endswith(f".{second.proc.pid}")]

        _start(nodes["worker1"], "worker")
        _start(nodes["forwarder"], "forwarder")
        delivered = _outputs_delivered(store, orthanc)
        jobs = store.query("SELECT j.*, s.seq FROM jobs j JOIN studies s ON s.study_uid = j.study_uid")
        assert len(jobs) == 1 and jobs[0]["state"] == "done" and jobs[0]["study_seq"] == jobs[0]["seq"]
        outputs = set(json.loads(jobs[0]["result"])["output_uids"])
        assert outputs and delivered == outputs == orthanc.sop_uids() and len(orthanc.get("/instances")) == len(outputs)
        store.close()

        for n in nodes.values():
            n.stop()
        verified = second.cli("audit", "verify")
        assert verified.returncode == 0 and "audit log intact" in verified.stdout, verified.stdout + verified.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
