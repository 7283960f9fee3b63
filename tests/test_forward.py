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


def test_an_output_queued_while_a_large_one_is_being_sent_goes_out_beside_it(store, tmp_path):
    """[forward] senders = 2: a C-STORE peer holds the first instance until it has received the
    second, which the node queued only after the first was on its way. One sending loop would
    keep the second behind the first (the peer would give up waiting); two send it beside it.
    On both engines (the PostgreSQL outbox leases through procrastinate)."""
    import threading

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from conftest import free_port
    from hccnode.config import ForwardSection
    from hccnode.net.forward import Forwarder
    from hccnode.store import outbox

    first, second = ct_series(store.data_dir / "out" / "a", n=1)[0], ct_series(store.data_dir / "out" / "b", n=1, seed=1)[0]
    first_uid, second_uid = sops([first]).pop(), sops([second]).pop()
    holding, second_in = threading.Event(), threading.Event()
    finished: list[str] = []

    def on_store(event):
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid == first_uid:
            holding.set()
            second_in.wait(20)                              # bounded (under the sender's 30 s): a failure, not a hang
        else:
            second_in.set()
        finished.append(uid)
        return 0x0000

    ae = AE(ae_title="PEER")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    stop = threading.Event()
    dest = f"PEER@127.0.0.1:{port}"
    forwarder = Forwarder(store.data_dir, ForwardSection(destinations=[dest], senders=2, poll_seconds=0.05), stop,
                          store_url=store.url)
    try:
        outbox.enqueue(store, dest, first)
        forwarder.start()
        wait_until(holding.is_set, 60, what="the peer to hold the first instance")
        outbox.enqueue(store, dest, second)
        wait_until(lambda: {r["state"] for r in store.query("SELECT state FROM outbox")} == {"sent"}, 60,
                   what="both rows sent")
    finally:
        second_in.set()
        stop.set()
        forwarder.join(10)
        server.shutdown()
    assert finished == [second_uid, first_uid]             # the second was through while the first was held
    assert len(store.query("SELECT id FROM outbox")) == 2
