"""`hccnode serve --role ...` at full scale on one PostgreSQL (tests/pg_support.py) and one shared data
directory: 2 receivers, 3 workers and 1 forwarder as separate processes on loopback; 20 phantom CECT
studies sent by 4 concurrent dcmtk storescu senders; kill -9 of a receiver mid-association and of a
worker holding a job; the outputs forwarded to a real Orthanc. Costs about 70 s of CPU (20 small
analyses, seven node starts, PostgreSQL, Orthanc): 95-120 s on the shared 2-core machine at a load
average of 8-11, where the three smaller tests it replaced took 147 s together in the same
conditions."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import threading
from copy import deepcopy
from pathlib import Path

import pydicom
import pytest
from conftest import free_port, listening_ports, need, port_open, wait_until
from node_support import sop_of, store_responses, study_seqs
from pipeline_support import scratch_dir

from hccnode.phantom import StudySpec, generate

pytestmark = pytest.mark.network

RECEIVERS, WORKERS = ("receiver1", "receiver2"), ("worker1", "worker2", "worker3")
SENDERS, STUDIES_PER_SENDER = 4, 5


def _site(node_factory, pg_url, orthanc, shared, names):
    """The processes' configurations: same data directory and database, own ports."""
    common = dict(node={"data_dir": str(shared)}, store={"url": pg_url},
                  forward={"destinations": [orthanc.destination]}, worker={"processes": 1, "lease_seconds": 10.0})
    nodes = {}
    for name in names:
        n = node_factory(name, hl7={"enabled": True, "port": free_port()}, **common)
        n.data_dir = shared
        nodes[name] = n
    return nodes


def _ready(node, role: str, starts: int = 1):
    """Wait for a node started with `start(wait=False, role=role)` to say it is ready (its log is
    appended to: for the `starts`-th time)."""
    wait_until(lambda: node.log().count("node.ready") >= starts or node.proc.poll() is not None, 90,
               what=f"{role} ready")
    assert node.proc.poll() is None, node.log()[-3000:]
    return node


def _studies(root: Path, n: int) -> list[list[str]]:
    """`n` small studies of `n` patients (each: 4 CT phases of 4 slices at 32x32 and a reader's SEG),
    the files of each sorted: one phantom study written again under new UIDs (every 2.25 UID, the
    SEG's references included) and a new patient ID per copy."""
    generate(StudySpec(kind="cect", seed=100, slices=4, matrix=32, noise_sd=2.0, seg_phase="equilibrium"),
             root / "phantom")
    sources = [pydicom.dcmread(p) for p in sorted((root / "phantom").rglob("*.dcm"))]
    studies = []
    for k in range(n):
        new_uids: dict[str, str] = {}

        def renew(ds, element):
            if element.VR == "UI" and isinstance(element.value, str) and element.value.startswith("2.25."):
                element.value = new_uids.setdefault(element.value, pydicom.uid.generate_uid(prefix="2.25."))

        files = []
        for i, ds in enumerate(sources):
            copy = deepcopy(ds)
            copy.walk(renew)
            copy.file_meta.walk(renew)
            copy.PatientID = f"ROLES{k:03d}"
            files.append(root / f"study{k}" / f"{i:03d}.dcm")
            files[-1].parent.mkdir(parents=True, exist_ok=True)
            copy.save_as(files[-1], enforce_file_format=True)
        studies.append([str(f) for f in files])
    return studies


def _storescu(receiver, files, log_path, aet: str = "STORESCU") -> subprocess.Popen:
    out = open(log_path, "w")
    proc = subprocess.Popen([need("storescu"), "-v", "-R", "-aet", aet, "-aec", "HCCNODE", "127.0.0.1",
                             str(receiver.port), *files], stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc


class Sender(threading.Thread):
    """A sending site: each study in its own association to its receiver; a study whose association
    fails (its receiver gone) is sent again whole to the other receiver, as a PACS with a second
    route does. Records each attempt, and any instance its receiver acknowledged that the index
    lacked when the association failed."""

    def __init__(self, index: int, studies: list[list[str]], route: tuple, root: Path, store, sops: dict):
        super().__init__(name=f"sender{index}", daemon=True)
        self.aet, self.studies, self.route, self.root, self.store, self.sops = f"SENDER{index}", studies, route, root, store, sops
        self.current: tuple | None = None     # (receiver, log path) of the association under way
        self.attempts: list[dict] = []
        self.lost: list[str] = []
        self.unsent: list[int] = []

    def run(self) -> None:
        for i, files in enumerate(self.studies):
            for receiver in self.route:
                log_path = self.root / f"{self.aet}-{i}-{receiver.workdir.name}-{len(self.attempts)}.log"
                proc = _storescu(receiver, files, log_path, self.aet)
                self.current = (receiver, log_path)
                code = proc.wait(180)
                self.current = None
                acked = [self.sops[f] for f, answer in store_responses(log_path.read_text()) if answer == "Success"]
                self.attempts.append({"receiver": receiver.workdir.name, "log": log_path, "code": code, "acked": acked,
                                      "files": len(files)})
                if code == 0 and len(acked) == len(files):
                    break
                indexed = {r["sop_uid"] for r in self.store.query("SELECT sop_uid FROM instances")}
                self.lost += [s for s in acked if s not in indexed]
            else:
                self.unsent.append(i)


def _mid_association(senders, receiver) -> Path | None:
    """The log of a sender's association with `receiver` that has had instances acknowledged and
    is not being released, or None."""
    for s in senders:
        current = s.current
        if current and current[0] is receiver:
            text = current[1].read_text(errors="replace")
            if text.count("Received Store Response") >= 2 and "Releasing Association" not in text:
                return current[1]
    return None


def _settled(store, n_studies: int) -> bool:
    """Every study has a finished job for its current seq, no job waits or runs, nothing waits to be sent."""
    seqs = study_seqs(store)
    jobs = store.query("SELECT study_uid, study_seq, state FROM jobs")
    return (len(seqs) == n_studies and not any(j["state"] in ("queued", "running") for j in jobs)
            and {j["study_uid"] for j in jobs if j["study_seq"] == seqs[j["study_uid"]]} == set(seqs)
            and not store.query("SELECT 1 FROM outbox WHERE state IN ('pending', 'sending')"))


def test_two_receivers_three_workers_one_forwarder_take_twenty_studies_through_a_receiver_and_a_worker_kill(
        node_factory, pg_url, orthanc, kill_landed):
    """4 senders at once, 2 per receiver, 5 studies each. Receiver 1 is killed -9 while a sender is
    in an association with it (its senders send their study again to receiver 2) and restarted; a
    worker is killed -9 once it holds a job. Then: every acknowledged instance is indexed exactly
    once, each study has one successful analysis of its last change, every output is in Orthanc
    once, and the audit chain verifies."""
    root = scratch_dir("roles-scale")
    shared = root / "shared"
    try:
        nodes = _site(node_factory, pg_url, orthanc, shared, names=(*RECEIVERS, *WORKERS, "forwarder"))
        roles = {**dict.fromkeys(RECEIVERS, "receiver"), **dict.fromkeys(WORKERS, "worker"), "forwarder": "forwarder"}
        nodes["receiver1"].start(wait=False, role="receiver")
        _ready(nodes["receiver1"], "receiver")       # the first process creates secret.key for all of them
        for name, role in roles.items():
            if name != "receiver1":
                nodes[name].start(wait=False, role=role)

        studies = _studies(root, SENDERS * STUDIES_PER_SENDER)
        sops = {f: sop_of(Path(f)) for files in studies for f in files}
        for name, role in roles.items():
            _ready(nodes[name], role)
        first, second = nodes["receiver1"], nodes["receiver2"]
        workers = [nodes[n] for n in WORKERS]
        assert all(r.echo_ok() and port_open(r.cfg["hl7"]["port"]) for r in (first, second))   # DICOM and HL7
        for n in (*workers, nodes["forwarder"]):    # no DICOM or HL7 listener outside the receivers
            assert not {n.port, n.cfg["hl7"]["port"]} & listening_ports(n.proc.pid)

        store = first.store()
        senders = [Sender(i, studies[i::SENDERS], (first, second) if i < 2 else (second, first), root, store, sops)
                   for i in range(SENDERS)]
        for s in senders:
            s.start()

        # kill -9 of receiver 1 while one of its senders is mid-association
        wait_until(lambda: _mid_association(senders[:2], first) or not any(s.is_alive() for s in senders[:2]), 120,
                   interval=0.01, what="a sender in an association with receiver 1")
        dead_pid, cut_log = first.proc.pid, _mid_association(senders[:2], first)
        assert cut_log, "receiver 1's senders finished before it could be killed"
        first.kill9()

        # kill -9 of a worker once it holds a job (per the store)
        owners = {w.proc.pid: w for w in workers}
        held = wait_until(lambda: [j for j in store.query("SELECT * FROM jobs WHERE state = 'running'")
                                   if j["lease_owner"] and int(j["lease_owner"].split(":")[1]) in owners], 180,
                          interval=0.05, what="a worker to hold a job")[0]
        victim = owners[int(held["lease_owner"].split(":")[1])]
        victim.kill9()
        at_kill = store.query("SELECT state FROM jobs WHERE id = ?", (held["id"],))[0]["state"]
        survivors = [w for w in workers if w is not victim]

        # receiver 1 back on the same host: the dead pid's temporary directory goes, the live receiver's stays
        tmp = shared / "spool" / ".tmp"
        _ready(first.start(wait=False, role="receiver"), "receiver", starts=2)
        assert not [d for d in tmp.iterdir() if d.name.endswith(f".{dead_pid}")]
        assert [d for d in tmp.iterdir() if d.name.endswith(f".{second.proc.pid}")]

        for s in senders:
            s.join(300)
            assert not s.is_alive(), f"{s.name} still sending"
        (cut,) = [a for s in senders for a in s.attempts if a["log"] == cut_log]
        rerouted = [a for s in senders[:2] for a in s.attempts if a["receiver"] == "receiver2"]
        kill_landed(f"receiver: {len(cut['acked'])} of {cut['files']} instances acknowledged in the association it "
                    f"cut (storescu exit {cut['code']}), {len(rerouted)} of receiver 1's studies then sent to "
                    f"receiver 2; worker: job {at_kill} when killed, its analysis "
                    f"{'' if 'pipeline.done' in victim.log() else 'not '}finished")
        assert all(s.lost == [] for s in senders), "an instance acknowledged by a receiver was lost"
        assert all(s.unsent == [] for s in senders), [a for s in senders for a in s.attempts]
        assert all("instance.failed" not in n.log() for n in (first, second))

        # every acknowledged instance indexed exactly once (and every instance was acknowledged)
        acked = {sop for s in senders for a in s.attempts for sop in a["acked"]}
        rows = store.query("SELECT sop_uid, path FROM instances")
        assert len(rows) == len({r["sop_uid"] for r in rows}) and {r["sop_uid"] for r in rows} == acked == set(sops.values())
        assert all((shared / r["path"]).is_file() for r in rows)

        wait_until(lambda: _settled(store, len(studies)), 400, interval=0.5, what="every study analysed and sent")
        assert not tmp.exists() or not list(tmp.rglob("*.part"))

        # each study: one successful analysis of its last change (a job done at the study's seq,
        # whose SR the analyses table records)
        seqs = study_seqs(store)
        jobs = store.query("SELECT * FROM jobs ORDER BY id")
        for uid, seq in seqs.items():
            (last,) = [j for j in jobs if j["study_uid"] == uid and j["study_seq"] == seq]
            assert last["state"] == "done", last
            outputs = set(json.loads(last["result"])["output_uids"])
            srs = {r["sr_uid"] for r in store.query("SELECT sr_uid FROM analyses WHERE job_id = ?", (last["id"],))}
            assert len(srs) == 1 and srs <= outputs

        # the job the killed worker held: finished once, by the survivors when the kill came first
        job = next(j for j in jobs if j["id"] == held["id"])
        done_by = [w for w in workers if re.search(rf"job\.done job={job['id']}\b", w.log())]
        assert job["state"] == "done" and len(done_by) == 1
        if job["attempts"] >= 2:
            assert done_by[0] in survivors and any("job.lease_taken_back" in w.log() for w in survivors)
        else:
            assert done_by == [victim]

        # every output in Orthanc exactly once, nothing failed or left to send
        outputs = {u for j in jobs if j["state"] == "done" for u in json.loads(j["result"])["output_uids"]}
        sent = {r["sop_uid"] for r in store.query("SELECT sop_uid FROM outbox WHERE state = 'sent'")}
        assert outputs and sent == outputs == orthanc.sop_uids() and len(orthanc.get("/instances")) == len(outputs)
        assert not store.query("SELECT 1 FROM outbox WHERE state <> 'sent'")

        # each part only where its role runs it
        receivers, forwarder = (first, second), nodes["forwarder"]
        assert not any("pipeline." in n.log() or "job.queued" in n.log() for n in (*receivers, forwarder))
        assert "outbox.sent" in forwarder.log() and not any("outbox.sent" in n.log() for n in (*receivers, *workers))
        store.close()

        for n in nodes.values():             # all asked to stop at once, then waited for
            n.proc.send_signal(signal.SIGTERM)
        for n in nodes.values():
            n.stop()
        verified = second.cli("audit", "verify")
        assert verified.returncode == 0 and "audit log intact" in verified.stdout, verified.stdout + verified.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
