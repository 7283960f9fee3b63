"""The durable job queue: stable trigger, coalescing, leases, retries."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from hccnode.store import jobs, lease
from hccnode.store.db import Store


def add_study(store, uid="1.2.3", age=100.0, seq=1):
    t = jobs.now() - age
    with store.tx() as c:
        c.execute("INSERT INTO studies (study_uid, first_received, last_received, seq) VALUES (?,?,?,?)"
                  " ON CONFLICT(study_uid) DO UPDATE SET last_received = excluded.last_received, seq = excluded.seq",
                  (uid, t, t, seq))


def test_only_quiet_studies_are_queued_and_only_once(store):
    add_study(store, "1.1", age=1000)
    add_study(store, "1.2", age=0)      # quiet for less than stable_seconds however slow this machine is
    assert len(jobs.queue_stable_studies(store, stable_seconds=600)) == 1
    assert jobs.queue_stable_studies(store, stable_seconds=600) == []
    assert [j["study_uid"] for j in store.query("SELECT * FROM jobs")] == ["1.1"]


def test_a_change_while_queued_moves_the_job_forward_and_after_done_requeues(store):
    add_study(store, seq=1)
    (first,) = jobs.queue_stable_studies(store, 5)
    add_study(store, seq=3)
    assert jobs.queue_stable_studies(store, 5) == [first]       # same job, now for seq 3
    assert store.query("SELECT study_seq FROM jobs")[0]["study_seq"] == 3
    job = jobs.claim(store, "w1", 30)
    assert jobs.complete(store, job.id, "w1", {"ok": True})
    add_study(store, seq=4)
    (second,) = jobs.queue_stable_studies(store, 5)
    assert second != first
    assert store.query("SELECT reason FROM jobs WHERE id = ?", (second,))[0]["reason"] == "requeue"


def test_expired_lease_is_claimed_again_and_attempts_are_bounded(store):
    add_study(store)
    jobs.queue_stable_studies(store, 5, max_attempts=2)
    a = jobs.claim(store, "dead-worker", lease_seconds=-1)      # lease already expired
    b = jobs.claim(store, "w2", lease_seconds=-1)
    assert a.id == b.id and b.attempts == 2
    assert not jobs.heartbeat(store, a.id, "dead-worker", 30)   # the lease moved on
    assert jobs.claim(store, "w3", 30) is None                 # two attempts used: failed
    row = jobs.get(store, a.id)
    assert row["state"] == "failed" and "lease expired" in row["error"]


def test_failure_retries_then_fails(store):
    add_study(store)
    jobs.queue_stable_studies(store, 5, max_attempts=2)
    j = jobs.claim(store, "w", 30)
    assert jobs.fail(store, j.id, "w", "boom") == "queued"
    j = jobs.claim(store, "w", 30)
    assert jobs.fail(store, j.id, "w", "boom again") == "failed"
    assert jobs.get(store, j.id)["error"] == "boom again"


def test_requeue_for_an_outside_input_moves_the_seq_and_queues_once(store):
    add_study(store)
    jobs.queue_stable_studies(store, 5)
    j = jobs.claim(store, "w", 30)
    jobs.complete(store, j.id, "w", {})
    new = jobs.requeue(store, "1.2.3", "lab")
    assert new != j.id and jobs.get(store, new)["reason"] == "lab"
    assert jobs.get(store, new)["study_seq"] == 2
    assert jobs.queue_stable_studies(store, 5) == []          # the watcher does not add another
    assert jobs.requeue(store, "9.9.9", "lab") is None         # unknown study


def test_a_job_of_a_dead_worker_process_is_claimed_at_once_and_a_live_ones_is_not(store):
    """After kill -9 the restarted node takes the job back without waiting out the lease."""
    add_study(store, "1.2.3")
    add_study(store, "1.2.4")
    jobs.queue_stable_studies(store, stable_seconds=5)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    try:
        live_owner = f"{socket.gethostname()}:{live.pid}:{lease._proc_stat(live.pid)[1]}/0"
        dead_owner = f"{socket.gethostname()}:{dead.pid}:1/0"
        a = jobs.claim(store, live_owner, lease_seconds=300)
        b = jobs.claim(store, live_owner, lease_seconds=300)
        assert a and b
        store.conn().execute("UPDATE jobs SET lease_owner = ? WHERE id = ?", (dead_owner, a.id))
        assert not lease.owner_alive(dead_owner)
        again = jobs.claim(store, jobs.worker_owner(0), lease_seconds=300)
        assert again is not None and again.id == a.id and again.attempts == 2
        assert jobs.claim(store, jobs.worker_owner(1), lease_seconds=300) is None   # the live one keeps its job
    finally:
        live.kill()
        live.wait(10)


def test_not_applicable_ends_the_job_at_once_and_it_is_never_claimed_again(store):
    add_study(store)
    (job_id,) = jobs.queue_stable_studies(store, 5, max_attempts=3)
    job = jobs.claim(store, "w", 30)
    reason = "study 1.2.3: not applicable: no CT or MR image series that can be read as a volume; ..."
    assert jobs.not_applicable(store, job.id, "w", {"study_uid": "1.2.3", jobs.NOT_APPLICABLE: reason})
    row = jobs.get(store, job_id)
    assert row["state"] == "not_applicable" and row["attempts"] == 1 and row["error"] == reason
    assert row["finished_at"] is not None and row["lease_owner"] is None
    assert jobs.claim(store, "w", 30) is None                     # attempts remain, yet not retried
    assert jobs.queue_stable_studies(store, 5) == []              # nor queued again for the same seq
    assert [j["state"] for j in jobs.listing(store, "not_applicable")] == ["not_applicable"]
    events = [r["event"] for r in store.query("SELECT event FROM audit WHERE study_uid = '1.2.3' ORDER BY id")]
    assert events == ["job.queued", "job.started", "job.not_applicable"]


# The jobs table as databases made before the state not_applicable have it (hccnode 64ac683):
# the same table and indexes with the CHECK of four states.
OLD_JOBS = jobs.SCHEMA.replace(jobs.STATE_CHECK, "CHECK (state IN ('queued', 'running', 'done', 'failed'))")


def test_an_old_database_is_migrated_on_open_keeping_every_job(tmp_path):
    import sqlite3

    data = tmp_path / "data"
    data.mkdir()
    old = sqlite3.connect(data / "hccnode.db")
    assert OLD_JOBS != jobs.SCHEMA
    old.executescript(OLD_JOBS)
    rows = [(1, "analyze", "1.1", 1, "stable", "done", 1, 3, None, None, 10.0, 5.0, 6.0, 7.0, None, '{"a": 1}'),
            (2, "analyze", "1.2", 1, "stable", "failed", 3, 3, None, None, 11.0, 5.5, 6.5, 7.5, "boom", None),
            (3, "analyze", "1.3", 2, "requeue", "queued", 0, 3, None, None, None, 8.0, None, None, None, None)]
    old.executemany("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    with pytest.raises(sqlite3.IntegrityError):                   # the old CHECK refuses the new state
        old.execute("UPDATE jobs SET state = 'not_applicable' WHERE id = 3")
    old.commit()
    old.close()

    store = Store(data)
    assert [tuple(r.values()) for r in store.query("SELECT * FROM jobs ORDER BY id")] == rows
    indexes = {r["name"] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs'")}
    assert {"jobs_state", "jobs_study", "jobs_unique_seq"} <= indexes
    with store.tx() as c:
        c.execute("UPDATE jobs SET state = 'not_applicable' WHERE id = 3")
        with pytest.raises(sqlite3.IntegrityError):               # still a CHECK: unknown states refused
            c.execute("UPDATE jobs SET state = 'lost' WHERE id = 3")
    assert store.query("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    store.close()
    again = Store(data)                                           # a current database is left as it is
    assert again.query("SELECT state FROM jobs WHERE id = 3") == [{"state": "not_applicable"}]
    again.close()
