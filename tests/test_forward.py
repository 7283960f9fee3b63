"""The outbox and forwarder against a real Orthanc over loopback."""

from __future__ import annotations

import pydicom
import pytest

from conftest import wait_until
from dicomgen import ct_series

pytestmark = pytest.mark.network


def sops(files) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def test_send_cli_delivers_through_the_outbox(node_factory, orthanc, tmp_path):
    node = node_factory()                                  # the CLI alone; no server needed
    files = ct_series(tmp_path / "in", n=5)
    r = node.cli("send", str(tmp_path / "in"), "--to", orthanc.destination)
    assert r.returncode == 0, r.stderr
    assert "sent 5 of 5" in r.stdout
    assert orthanc.sop_uids() == sops(files)
    rows = node.store().query("SELECT state, attempts, last_status FROM outbox")
    assert len(rows) == 5 and all(r["state"] == "sent" and r["attempts"] == 1 and r["last_status"] == 0 for r in rows)

    listing = node.cli("outbox")
    assert listing.returncode == 0 and "totals: sent 5" in listing.stdout


def test_outbox_keeps_rows_while_orthanc_is_down_and_delivers_once_it_is_back(node_factory, orthanc, tmp_path):
    files = ct_series(tmp_path / "in", n=6)
    orthanc.stop()
    node = node_factory()
    r = node.cli("send", *map(str, files), "--to", orthanc.destination)
    assert r.returncode == 1 and "stay in the outbox" in r.stdout
    store = node.store()
    rows = store.query("SELECT * FROM outbox")
    assert len(rows) == 6 and all(r["state"] == "pending" and r["attempts"] == 1 for r in rows)
    assert all("association failed: connection refused" in r["last_error"] for r in rows)

    node.start()                                           # the serving node's forwarder retries
    wait_until(lambda: store.query("SELECT MIN(attempts) AS a FROM outbox")[0]["a"] >= 2, 20,
               what="a retry with backoff while Orthanc is down")
    node.stop()                                            # survives a restart, too
    orthanc.start()
    node.start()
    wait_until(lambda: all(r["state"] == "sent" for r in store.query("SELECT state FROM outbox")), 30,
               what="delivery after Orthanc is back")
    assert orthanc.sop_uids() == sops(files)
    assert len(orthanc.get("/instances")) == 6             # no duplicate
    sent = store.query("SELECT * FROM outbox")
    assert all(r["last_status"] == 0 and r["sent_at"] for r in sent)


def test_refused_destination_is_retried_then_failed_with_the_reason(node_factory, orthanc, tmp_path):
    files = ct_series(tmp_path / "in", n=1)
    node = node_factory(forward={"max_attempts": 2, "retry_base_seconds": 0.1})
    wrong = f"NOTORTHANC@127.0.0.1:{orthanc.dicom_port}"    # Orthanc rejects the called AE title
    r = node.cli("send", str(files[0]), "--to", wrong)
    assert r.returncode == 1
    row = node.store().query("SELECT * FROM outbox")[0]
    # Orthanc refuses a wrong called AE title with A-ASSOCIATE-RJ, or under load with A-ABORT.
    assert row["state"] == "pending" and ("rejected" in row["last_error"] or "aborted by peer" in row["last_error"])
    node.start()
    wait_until(lambda: node.store().query("SELECT state FROM outbox")[0]["state"] == "failed", 20,
               what="row failed after max_attempts")
    node.stop()
    assert "outbox.failed" in node.log()
    r = node.cli("outbox", "--retry-failed")
    assert "queued again: 1" in r.stdout
    assert node.store().query("SELECT state FROM outbox")[0]["state"] == "pending"
