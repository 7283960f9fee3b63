"""Outbox bookkeeping: dedupe, leases, exponential backoff."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys

import pytest

from dicomgen import ct_series
from hccnode.store import lease, outbox
from hccnode.store.db import Store


def test_enqueue_dedupes_waiting_rows_and_reads_the_file_meta(store, tmp_path):
    f = ct_series(tmp_path / "in", n=1)[0]
    first = outbox.enqueue(store, "PACS@127.0.0.1:104", f)
    assert outbox.enqueue(store, "PACS@127.0.0.1:104", f) is None
    assert outbox.enqueue(store, "OTHER@127.0.0.1:104", f) != first
    row = store.query("SELECT * FROM outbox WHERE id = ?", (first,))[0]
    assert row["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2" and row["transfer_syntax"] == "1.2.840.10008.1.2.1"


def due_now(store) -> None:
    """Make every waiting row due now instead of waiting out its backoff (on PostgreSQL its
    procrastinate job too, which holds the due time the claim goes by)."""
    store.conn().execute("UPDATE outbox SET next_attempt_at = 0")
    if store.engine == "postgresql":
        store.conn().execute("UPDATE procrastinate_jobs SET scheduled_at = now() WHERE status = 'todo'")


def test_backoff_doubles_up_to_the_cap_then_fails(store, tmp_path):
    f = ct_series(tmp_path / "in", n=1)[0]
    outbox.enqueue(store, "PACS@127.0.0.1:104", f)
    for want in (1, 2, 4, 5, 5):                                   # base * 2^(attempt - 1), capped at 5
        due_now(store)
        (item,) = outbox.claim_due(store)["PACS@127.0.0.1:104"]
        assert outbox.claim_due(store) == {}                       # leased: nobody else takes it
        before = outbox.now()
        state = outbox.mark_failed(store, item, "down", None, base=1.0, cap=5.0, max_attempts=5)
        after = outbox.now()
        # the retry time is the failure's time plus the delay, and the failure fell in [before, after]
        due = store.query("SELECT next_attempt_at FROM outbox")[0]["next_attempt_at"]
        assert before + want <= due <= after + want, (item.attempts, due - before, after - before)
    assert state == "failed"
    assert outbox.retry_failed(store) == 1


def test_a_lease_of_a_dead_sender_is_taken_back_at_once_and_a_live_one_is_not(store, tmp_path):
    def owner_of(pid: int) -> str:
        return f"{socket.gethostname()}:{pid}:{lease._proc_stat(pid)[1]}"

    files = ct_series(tmp_path / "in", n=2)
    for f in files:
        outbox.enqueue(store, "PACS@127.0.0.1:104", f)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        live_owner = owner_of(live.pid)
        dead_owner = owner_of(dead.pid)
        dead.stdin.close()
        dead.wait(30)                                            # exited and reaped
        store.conn().execute("UPDATE outbox SET state = 'sending', lease_expires = ?, lease_owner = ?"
                             " WHERE id = 1", (outbox.now() + 300, dead_owner))
        store.conn().execute("UPDATE outbox SET state = 'sending', lease_expires = ?, lease_owner = ?"
                             " WHERE id = 2", (outbox.now() + 300, live_owner))
        assert lease.owner_alive(live_owner) and not lease.owner_alive(dead_owner)
        assert not lease.owner_alive(f"{socket.gethostname()}:{live.pid}:1")    # same PID, another process
        assert lease.owner_alive(f"elsewhere:{dead.pid}:1")                      # another host: wait for expiry
        (item,) = outbox.claim_due(store)["PACS@127.0.0.1:104"]
        assert item.id == 1 and item.attempts == 1
        assert store.query("SELECT lease_owner FROM outbox WHERE id = 1")[0]["lease_owner"] == lease.owner_id()
    finally:
        live.kill()
        live.wait(10)


def test_an_older_outbox_table_gets_the_lease_owner_column(tmp_path):
    data = tmp_path / "old"
    data.mkdir()
    c = sqlite3.connect(data / "hccnode.db")
    c.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, destination TEXT NOT NULL, path TEXT NOT NULL,"
              " sop_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, transfer_syntax TEXT NOT NULL, study_uid TEXT,"
              " job_id INTEGER, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
              " next_attempt_at REAL NOT NULL, lease_expires REAL, last_status INTEGER, last_error TEXT,"
              " created_at REAL NOT NULL, sent_at REAL)")
    c.close()
    s = Store(data)
    assert "lease_owner" in {r["name"] for r in s.query("PRAGMA table_info(outbox)")}
    assert outbox.claim_due(s) == {}
