"""`hccnode serve` runs every listener: DICOM and HL7 (MLLP) in one process."""

from __future__ import annotations

import socket

import pytest

from conftest import free_port
from labs_support import ack_fields, obx, oru

pytestmark = pytest.mark.network


def mllp_send(port: int, message: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_serve_starts_the_mllp_listener_and_labs_are_stored(node_factory):
    hl7_port = free_port()
    node = node_factory(hl7={"enabled": True, "port": hl7_port}).start()
    ack = ack_fields(mllp_send(hl7_port, oru(obx(1, "4544-3", "41", "%", time="20240105080000"),
                                             control="NODE1")))
    assert ack["code"] == "AA" and ack["control"] == "NODE1"
    shown = node.cli("labs", "show", "123456")
    assert shown.returncode == 0 and "hct" in shown.stdout.lower() and "0.41" in shown.stdout
    node.stop()
    assert "hl7.listening" in node.log() and "123456" not in node.log()


def test_a_late_lab_result_requeues_the_study_that_was_analysed_without_it(node_factory, tmp_path):
    from datetime import datetime, timezone

    import pydicom

    from conftest import need, wait_until
    from dicomgen import PATIENT_ID, ct_series
    from hccnode.labs import catalog, requeue
    from hccnode.labs.matching import match_lab

    hl7_port = free_port()
    from node_support import WATCHER_HELD, release_watcher

    node = node_factory(hl7={"enabled": True, "port": hl7_port}, study=WATCHER_HELD).start()
    files = ct_series(tmp_path / "in", n=2)
    import subprocess
    assert subprocess.run([need("storescu"), "-aec", "HCCNODE", "127.0.0.1", str(node.port), *map(str, files)],
                          capture_output=True).returncode == 0
    store = node.store()
    release_watcher(node)                      # the study whole in the index: one analysis before the lab
    first = wait_until(lambda: store.query("SELECT * FROM jobs WHERE state = 'done'"), 20, what="first analysis")
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)

    # What the analysis records when it looks for HCT (paper 000) and finds none.
    scan = datetime(2026, 1, 1, 8, 1, tzinfo=timezone.utc)
    cat = catalog.load()
    m = match_lab(store, PATIENT_ID, None, scan, "hct", cat.window("000", "hct"))
    assert m.status == "missing"
    requeue.record_usage(store, study, scan, "000", [m])

    ack = ack_fields(mllp_send(hl7_port, oru(obx(1, "4544-3", "40", "%", time="20260101070000+0000"),
                                             pid=f"PID|1||{PATIENT_ID}||Test^Patient", control="LATE1")))
    assert ack["code"] == "AA"
    jobs = wait_until(lambda: (j := store.query("SELECT * FROM jobs ORDER BY id")) and len(j) == 2 and j, 20,
                      what="re-queued job")
    assert jobs[1]["reason"] == "lab" and jobs[1]["study_uid"] == study and jobs[0]["id"] == first[0]["id"]
    assert "study.requeued" in node.log() and PATIENT_ID not in node.log()
