"""Outbox bookkeeping: dedupe, leases, exponential backoff."""

from __future__ import annotations

import pytest

from dicomgen import ct_series
from hccnode.store import outbox
from hccnode.store.db import Store


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "data")


def test_enqueue_dedupes_waiting_rows_and_reads_the_file_meta(store, tmp_path):
    f = ct_series(tmp_path / "in", n=1)[0]
    first = outbox.enqueue(store, "PACS@127.0.0.1:104", f)
    assert outbox.enqueue(store, "PACS@127.0.0.1:104", f) is None
    assert outbox.enqueue(store, "OTHER@127.0.0.1:104", f) != first
    row = store.query("SELECT * FROM outbox WHERE id = ?", (first,))[0]
    assert row["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2" and row["transfer_syntax"] == "1.2.840.10008.1.2.1"


def test_backoff_doubles_up_to_the_cap_then_fails(store, tmp_path):
    f = ct_series(tmp_path / "in", n=1)[0]
    outbox.enqueue(store, "PACS@127.0.0.1:104", f)
    delays = []
    for _ in range(5):
        store.conn().execute("UPDATE outbox SET next_attempt_at = 0")
        (item,) = outbox.claim_due(store)["PACS@127.0.0.1:104"]
        assert outbox.claim_due(store) == {}                       # leased: nobody else takes it
        t0 = outbox.now()
        state = outbox.mark_failed(store, item, "down", None, base=1.0, cap=5.0, max_attempts=5)
        delays.append(round(store.query("SELECT next_attempt_at FROM outbox")[0]["next_attempt_at"] - t0))
    assert delays == [1, 2, 4, 5, 5]
    assert state == "failed"
    assert outbox.retry_failed(store) == 1
