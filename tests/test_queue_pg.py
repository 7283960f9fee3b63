"""The job queue on PostgreSQL (procrastinate, hccnode.store.pgqueue) with real processes and
threads on a real server: a worker killed -9 on "another host" loses its job once its heartbeat
goes stale, and one study never has two jobs running or two waiting.

Cost: about 10 s (a 2 s lease waited out once; 4 threads over 3 studies changed 4 times each)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hccnode.store import jobs, outbox
from hccnode.store.db import Store
from test_jobs import add_study

ROOT = Path(__file__).resolve().parent.parent
LEASE = 2.0

# A worker named as if it ran on another host (so its PID cannot be checked from here): claims a
# job, says which, then heartbeats (well within the lease) until it is killed.
HOLDER = textwrap.dedent("""
    import os, sys, time
    from hccnode.store import jobs
    from hccnode.store.db import Store
    store = Store(sys.argv[1], url=sys.argv[2])
    owner = f"elsewhere:{os.getpid()}:1/0"
    job = jobs.claim(store, owner, float(sys.argv[3]))
    print(job.id, owner, flush=True)
    for _ in range(100000):
        time.sleep(float(sys.argv[3]) / 8)
        assert jobs.heartbeat(store, job.id, owner, float(sys.argv[3]))
""")


@pytest.fixture
def pg_store(pg_url, tmp_path):
    s = Store(tmp_path / "data", url=pg_url)
    yield s
    s.close()


def test_a_worker_killed_on_another_host_loses_its_job_when_its_heartbeat_goes_stale(pg_store, pg_url, tmp_path):
    store = pg_store
    add_study(store, "1.2.3")
    (job_id,) = jobs.queue_stable_studies(store, 5)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "data"), pg_url, str(LEASE)],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        claimed, owner = holder.stdout.readline().split()
        assert int(claimed) == job_id
        seen = {jobs.get(store, job_id)["heartbeat_at"]}
        for _ in range(600):                          # two heartbeats after the claim: it is alive
            seen.add(jobs.get(store, job_id)["heartbeat_at"])
            if len(seen) >= 3:
                break
            time.sleep(0.05)
        assert len(seen) >= 3
        assert jobs.claim(store, "rescuer", LEASE) is None     # a live holder keeps its job
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(30)
    for _ in range(int(20 * LEASE / 0.05)):           # bounded: the heartbeat goes stale after LEASE
        again = jobs.claim(store, "rescuer", LEASE)
        if again is not None:
            break
        time.sleep(0.05)
    assert again is not None and again.id == job_id and again.attempts == 2 and again.lease_owner == "rescuer"
    assert jobs.complete(store, job_id, "rescuer", {"ok": True})
    assert jobs.get(store, job_id)["state"] == "done"
    c = store.conn()
    # procrastinate's side: the job ran twice and succeeded; the dead worker heartbeats no more
    dead_worker = c.execute("SELECT last_heartbeat < now() - make_interval(secs => ?) FROM procrastinate_workers w"
                            " JOIN queue_workers q ON q.worker_id = w.id WHERE q.owner = ?", (LEASE, owner)).fetchone()
    assert dead_worker == (True,)
    queue_job = jobs.get(store, job_id)["queue_job"]
    assert c.execute("SELECT status, attempts FROM procrastinate_jobs WHERE id = ?", (queue_job,)).fetchone() == ("succeeded", 2)
    events = [r["event"] for r in store.query("SELECT event FROM audit WHERE study_uid = '1.2.3' ORDER BY id")]
    assert events == ["job.queued", "job.started", "job.started", "job.done"]


def test_one_study_never_has_two_jobs_running_and_every_change_is_analysed(store):
    """4 worker threads (each its own connection) and a thread that changes studies while they run:
    never two running jobs of one study, never two waiting, and each study's last change analysed.
    On both engines."""
    studies = ["1.1", "1.2", "1.3"]
    for uid in studies:
        add_study(store, uid)
    jobs.queue_stable_studies(store, 5)
    running: set[str] = set()
    overlaps: list[str] = []
    two_waiting: list[tuple] = []
    guard = threading.Lock()
    changes_done = threading.Event()
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        owner = f"test-worker/{index}"
        try:
            for _ in range(2000):
                job = jobs.claim(store, owner, 30)
                if job is None:
                    if changes_done.is_set() and not jobs.counts(store).get("queued"):
                        return
                    time.sleep(0.01)
                    continue
                with guard:
                    if job.study_uid in running:
                        overlaps.append(job.study_uid)
                    running.add(job.study_uid)
                time.sleep(0.2)                        # the analysis; changes arrive meanwhile
                with guard:
                    running.discard(job.study_uid)
                assert jobs.complete(store, job.id, owner, {})
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
        finally:
            store.close()

    def changer() -> None:
        try:
            for _ in range(4):                         # every study changes while its job runs
                time.sleep(0.1)
                for uid in studies:
                    jobs.requeue(store, uid, "lab")
                two_waiting.extend(store.query("SELECT study_uid, COUNT(*) AS n FROM jobs WHERE state = 'queued'"
                                               " GROUP BY study_uid HAVING COUNT(*) > 1"))
        except BaseException as exc:
            errors.append(exc)
        finally:
            changes_done.set()
            store.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)] + [threading.Thread(target=changer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert overlaps == []
    assert two_waiting == []
    for uid in studies:
        seq = store.query("SELECT seq FROM studies WHERE study_uid = ?", (uid,))[0]["seq"]
        done = store.query("SELECT MAX(study_seq) AS s FROM jobs WHERE study_uid = ? AND state = 'done'", (uid,))[0]["s"]
        assert seq == 5 and done == seq                # 1 + 4 changes each; the last one analysed
    assert set(jobs.counts(store)) == {"done"}
    if store.engine == "postgresql":                   # procrastinate agrees: every job succeeded
        statuses = {r[0] for r in store.conn().execute("SELECT DISTINCT status FROM procrastinate_jobs")}
        assert statuses == {"succeeded"}


def test_a_store_copied_from_sqlite_gets_its_waiting_jobs_and_rows_into_procrastinate(pg_store, tmp_path):
    """Rows without a procrastinate job (as `hccnode store migrate` copies them) are queued on the
    next claim, not forgotten."""
    from dicomgen import ct_series

    store = pg_store
    add_study(store, "1.2.3")
    t = jobs.now()
    store.conn().execute("INSERT INTO jobs (kind, study_uid, study_seq, reason, state, max_attempts, created_at)"
                         " VALUES ('analyze', '1.2.3', 1, 'stable', 'queued', 3, ?)", (t,))
    f = ct_series(tmp_path / "in", n=1)[0]
    store.conn().execute("INSERT INTO outbox (destination, path, sop_uid, sop_class_uid, transfer_syntax, state,"
                         " next_attempt_at, created_at) VALUES ('PACS@127.0.0.1:104', ?, '9.9', '1.2', '1.2.840.10008.1.2.1',"
                         " 'pending', ?, ?)", (str(f), t, t))
    job = jobs.claim(store, "w", 30)
    assert job is not None and job.study_uid == "1.2.3" and jobs.get(store, job.id)["queue_job"] is not None
    (item,) = outbox.claim_due(store)["PACS@127.0.0.1:104"]
    assert item.sop_uid == "9.9"
