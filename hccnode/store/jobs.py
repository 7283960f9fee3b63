"""Durable job queue in SQLite: rows, not memory, so a restart or kill -9 resumes them.

States: queued -> running -> done | failed | not_applicable (the study holds nothing the
analysis applies to, e.g. no CT or MR image series readable as a volume: ended at once, with the
reason, never retried). A running job holds a lease that its worker renews by heartbeat; a lease
that expires (the worker died) makes the job claimable again, until `max_attempts` is used up. The stable-study watcher turns a study that has been
quiet for `stable_seconds` into an `analyze` job; a study that changes after it was queued
(new or replaced instance, late annotation, late lab) is queued again.

The interface (`enqueue`, `claim`, `heartbeat`, `complete`, `not_applicable`, `fail`) is what a distributed
queue would implement for a multi-node site; a worker needs only a job id and the store.

On PostgreSQL each row is also a procrastinate job (hccnode.store.pgqueue), in the same
transaction: its queueing lock and lock (the study) keep one job of a study waiting and one running,
and a worker whose heartbeat went stale, on any host, loses its job to the next claim. A failed or
lost job is queued again unless a newer job of its study waits already; then it ends failed, and
the newer one analyses the study's later change.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from dataclasses import dataclass

from hccnode import log
from hccnode.store import audit, engine, lease, pgqueue
from hccnode.store.db import Store, migration, now, schema

STATES = ("queued", "running", "done", "failed", "not_applicable")
NOT_APPLICABLE = "not_applicable"
STATE_CHECK = f"CHECK (state IN ({', '.join(repr(s) for s in STATES)}))"

INDEXES = """CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_seq ON jobs(kind, study_uid, study_seq);"""

SCHEMA = schema(
    f"""
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    study_seq INTEGER NOT NULL,    -- the study's seq when queued: what this job analyses
    reason TEXT NOT NULL,          -- stable | requeue | manual | lab | annotation | treatment_start
    state TEXT NOT NULL {STATE_CHECK},
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires REAL,
    heartbeat_at REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    result TEXT                    -- JSON
);
{INDEXES}
"""
)


def _rebuild_for_states(c: sqlite3.Connection) -> None:
    """A database made before a state was added has a CHECK that refuses it. SQLite cannot change
    a CHECK in place: the table is rebuilt (sqlite.org/lang_altertable.html, "other kinds of table
    schema changes"): a copy with the new CHECK, every row moved over, the old table dropped, the
    copy renamed, the indexes made again; all in one transaction, so a crash leaves either."""
    sql = _jobs_sql(c)
    new = re.sub(r"CHECK\s*\(\s*state\s+IN\s*\([^)]*\)\s*\)", STATE_CHECK, sql, count=1)
    new = re.sub(r"^CREATE TABLE\s+(IF NOT EXISTS\s+)?[\"`]?jobs[\"`]?", "CREATE TABLE jobs_rebuilt", new, count=1)
    n = c.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    c.execute(new)
    c.execute("INSERT INTO jobs_rebuilt SELECT * FROM jobs")
    c.execute("DROP TABLE jobs")
    c.execute("ALTER TABLE jobs_rebuilt RENAME TO jobs")
    for statement in INDEXES.strip().splitlines():
        c.execute(statement)
    log.event("store.migrated", table="jobs", change="job states " + ", ".join(STATES), rows=n)


def _jobs_sql(c: sqlite3.Connection) -> str:
    return c.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()["sql"]


migration(lambda c: STATE_CHECK not in _jobs_sql(c), _rebuild_for_states)

ANALYZE = "analyze"


@dataclass
class Job:
    id: int
    kind: str
    study_uid: str
    study_seq: int
    attempts: int
    lease_owner: str

    @classmethod
    def from_row(cls, r: sqlite3.Row | dict) -> "Job":
        return cls(r["id"], r["kind"], r["study_uid"], r["study_seq"], r["attempts"], r["lease_owner"])


def enqueue(store: Store, study_uid: str, reason: str, max_attempts: int = 3, kind: str = ANALYZE) -> int | None:
    """Queue `study_uid` at its current seq, unless a job for that seq exists; returns the job id.

    A still-queued job for the same study is moved forward to the new seq instead of
    adding a second one, so a burst of changes gives one analysis.
    """
    with store.tx() as c:
        queued = _enqueue(c, study_uid, reason, max_attempts, kind)
    return _logged(queued)


def _logged(queued: dict | None) -> int | None:
    """Log a queued job once its transaction has committed; returns its id."""
    if queued is None:
        return None
    log.event("job.queued", **queued)
    return queued["job"]


def _enqueue(c: sqlite3.Connection, study_uid: str, reason: str, max_attempts: int, kind: str) -> dict | None:
    """Queue in transaction `c`; returns what to log after the commit (or None: nothing queued)."""
    study = c.execute("SELECT seq FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
    if study is None:
        return None
    seq = study["seq"]
    if c.execute("SELECT 1 FROM jobs WHERE kind = ? AND study_uid = ? AND study_seq = ?",
                 (kind, study_uid, seq)).fetchone():
        return None
    pending = c.execute("SELECT id FROM jobs WHERE kind = ? AND study_uid = ? AND state = 'queued'",
                        (kind, study_uid)).fetchone()
    if pending:
        c.execute("UPDATE jobs SET study_seq = ?, reason = ? WHERE id = ?", (seq, reason, pending["id"]))
        job_id = pending["id"]
    else:
        job_id = engine.insert_id(
            c, "INSERT INTO jobs (kind, study_uid, study_seq, reason, state, max_attempts, created_at)"
            " VALUES (?,?,?,?, 'queued', ?, ?)", (kind, study_uid, seq, reason, max_attempts, now()))
        if engine.is_pg(c):
            _defer(c, job_id, kind, study_uid)
    audit.append(c, "job.queued", "jobs", study_uid=study_uid, job=job_id, seq=seq, reason=reason)
    return {"job": job_id, "study": study_uid, "seq": seq, "reason": reason}


def requeue(store: Store, study_uid: str, reason: str, max_attempts: int = 3) -> int | None:
    """Queue `study_uid` again because an input outside its instances changed (a lab
    result, a reader's annotation): the study's seq moves on, so the change is analysed."""
    with store.tx() as c:
        if not c.execute("UPDATE studies SET seq = seq + 1 WHERE study_uid = ?", (study_uid,)).rowcount:
            return None
        queued = _enqueue(c, study_uid, reason, max_attempts, ANALYZE)
    return _logged(queued)


_STABLE_SQL = """SELECT s.study_uid,
       (SELECT COUNT(*) FROM jobs j WHERE j.kind = ? AND j.study_uid = s.study_uid) AS n_jobs
FROM studies s
WHERE s.last_received <= ?
  AND s.seq > COALESCE((SELECT MAX(study_seq) FROM jobs j WHERE j.kind = ? AND j.study_uid = s.study_uid), 0)"""


def queue_stable_studies(store: Store, stable_seconds: float, max_attempts: int = 3) -> list[int]:
    """Queue every study quiet for `stable_seconds` whose current seq has no job yet."""
    cutoff = now() - stable_seconds
    # A plain read first: the write lock is taken only when there is work, so an idle
    # watcher never makes an instance wait for the index.
    if not store.conn().execute(_STABLE_SQL + " LIMIT 1", (ANALYZE, cutoff, ANALYZE)).fetchone():
        return []
    with store.tx() as c:
        rows = c.execute(_STABLE_SQL, (ANALYZE, cutoff, ANALYZE)).fetchall()
        queued = [_enqueue(c, r["study_uid"], "stable" if r["n_jobs"] == 0 else "requeue", max_attempts, ANALYZE)
                  for r in rows]
    return [job_id for q in queued if (job_id := _logged(q)) is not None]


# A queued job waits while a job of its study runs on a live lease (one analysis of a study at a
# time: a change that arrives mid-analysis is analysed after it, not beside it).
_CLAIMABLE_SQL = ("SELECT * FROM jobs j WHERE (j.state = 'queued' AND NOT EXISTS (SELECT 1 FROM jobs r"
                  " WHERE r.study_uid = j.study_uid AND r.state = 'running' AND r.lease_expires >= :t))"
                  " OR (j.state = 'running' AND j.lease_expires < :t) ORDER BY j.id LIMIT 1")


def claim(store: Store, owner: str, lease_seconds: float) -> Job | None:
    """Take the oldest claimable job (queued with no job of its study running, or running with an
    expired lease)."""
    if store.engine == engine.POSTGRESQL:
        return _claim_pg(store, owner, lease_seconds)
    t = now()
    dead = lease.dead_holders(store.conn(), "jobs", "running")
    if not dead and not store.conn().execute(_CLAIMABLE_SQL, {"t": t}).fetchone():  # idle: no write lock taken
        return None
    with store.tx() as c:
        for holder in dead:  # its process is gone (kill -9, crash): no need to wait out the lease
            n = c.execute("UPDATE jobs SET lease_expires = ? WHERE state = 'running' AND lease_owner = ?",
                          (t - 1, holder)).rowcount
            if n:
                log.event("job.lease_taken_back", level=logging.WARNING, owner=holder, jobs=n, reason="holder gone")
        while True:
            r = c.execute(_CLAIMABLE_SQL, {"t": t}).fetchone()
            if r is None:
                return None
            if r["state"] == "running" and r["attempts"] >= r["max_attempts"]:
                _lost_for_good(c, r, t)
                continue
            if r["state"] == "running":
                log.event("job.lease_expired", level=logging.WARNING, job=r["id"], owner=r["lease_owner"])
            return _start(c, r["id"], owner, t, lease_seconds)


def _lost_for_good(c, r, t: float) -> None:
    """Fail a running job whose worker was lost and whose attempts are used up."""
    c.execute("UPDATE jobs SET state = 'failed', finished_at = ?, error = ?, lease_owner = NULL"
              " WHERE id = ?", (t, f"worker lost {r['attempts']} times (lease expired)", r["id"]))
    audit.append(c, "job.failed", "jobs", study_uid=r["study_uid"], job=r["id"], attempt=r["attempts"],
                 state="failed", error="lease expired")
    log.event("job.failed", level=logging.ERROR, job=r["id"], study=r["study_uid"], reason="lease expired")


def _start(c, job_id: int, owner: str, t: float, lease_seconds: float) -> Job:
    """Mark a job running for `owner` with a lease of `lease_seconds`; one more attempt."""
    c.execute(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = ?, lease_expires = ?,"
        " heartbeat_at = ?, started_at = ?, error = NULL WHERE id = ?",
        (owner, t + lease_seconds, t, t, job_id))
    row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    audit.append(c, "job.started", "worker", study_uid=row["study_uid"], job=row["id"],
                 attempt=row["attempts"], owner=owner)
    log.event("job.started", job=row["id"], study=row["study_uid"], attempt=row["attempts"], owner=owner)
    return Job.from_row(row)


# -- PostgreSQL: procrastinate ------------------------------------------------------------------

def _study_lock(kind: str, study_uid: str) -> str:
    """The procrastinate lock and queueing lock of a study's jobs of `kind`."""
    return f"{kind}:{study_uid}"


def _defer(c, job_id: int, kind: str, study_uid: str) -> None:
    lock = _study_lock(kind, study_uid)
    queue_job = pgqueue.defer(c, pgqueue.JOBS_QUEUE, kind, lock, lock, job_id)
    c.execute("UPDATE jobs SET queue_job = ? WHERE id = ?", (queue_job, job_id))


def _back_in_queue(c, r) -> bool:
    """Queue job row `r` (running, or just failed) again in procrastinate; False, and its
    procrastinate job failed, when a newer job of the study waits already (that one analyses
    the later change)."""
    newer = pgqueue.waiting(c, _study_lock(r["kind"], r["study_uid"]))
    status = pgqueue.status(c, r["queue_job"]) if r["queue_job"] is not None else None
    if newer is not None and newer != r["queue_job"]:
        if status in ("todo", "doing"):
            pgqueue.finish(c, r["queue_job"], succeeded=False)
        return False
    if status in ("doing", "failed"):
        pgqueue.retry(c, r["queue_job"])
    elif status is None:
        _defer(c, r["id"], r["kind"], r["study_uid"])
    return True


SUPERSEDED = "; not retried: a newer job of the study waits"

# Rows that procrastinate does not know to be claimable: running with an expired lease, and queued
# rows without a procrastinate job (copied by `hccnode store migrate`).
_ADRIFT_SQL = ("SELECT 1 FROM jobs WHERE (state = 'running' AND lease_expires < ?)"
               " OR (state = 'queued' AND queue_job IS NULL) LIMIT 1")


def _claim_pg(store: Store, owner: str, lease_seconds: float) -> Job | None:
    """Claim on PostgreSQL: recover the jobs of lost workers (heartbeat older than `lease_seconds`,
    on any host; a process of this host that is gone; an expired lease), then fetch the next job
    whose study no other job runs for."""
    t = now()
    read = store.conn()
    dead = lease.dead_holders(read, "jobs", "running")
    adrift = read.execute(_ADRIFT_SQL, (t,)).fetchone() is not None
    if not dead and not adrift and not pgqueue.pending(read, pgqueue.JOBS_QUEUE, lease_seconds):
        return None   # idle: no write lock taken
    with store.tx() as c:
        lost = pgqueue.stalled(c, pgqueue.JOBS_QUEUE, lease_seconds)
        if dead or adrift or lost:
            _recover_pg(c, t, dead, lost)
        worker_id = pgqueue.worker(c, owner)
        for _ in range(100):  # bounded: a fetched job whose row is not queued is left to its holder
            got = pgqueue.fetch(c, pgqueue.JOBS_QUEUE, worker_id)
            if got is None:
                return None
            if c.execute("SELECT 1 FROM jobs WHERE id = ? AND state = 'queued'", (got[1],)).fetchone():
                return _start(c, got[1], owner, t, lease_seconds)
    return None


def _recover_pg(c, t: float, dead: list[str], lost: list[int]) -> None:
    """Queue again (or fail, attempts used up) the running jobs of holders that are gone (`dead`),
    whose procrastinate job is stalled (`lost`) or whose lease expired; queue the rows that have
    no procrastinate job."""
    pgqueue.prune(c)
    for holder in dead:  # its process is gone (kill -9, crash): no need to wait out the heartbeat
        pgqueue.forget(c, holder)
        log.event("job.lease_taken_back", level=logging.WARNING, owner=holder, reason="holder gone")
    for r in c.execute(f"SELECT * FROM jobs WHERE state = 'running' AND (lease_expires < ?"
                       f" OR lease_owner IN {engine.in_list(len(dead))} OR queue_job = ANY(?::bigint[]))"
                       " ORDER BY id", (t, *dead, lost)).fetchall():
        if r["attempts"] >= r["max_attempts"]:
            _lost_for_good(c, r, t)
            _queue_finished(c, r["id"], succeeded=False)
        elif _back_in_queue(c, r):
            c.execute("UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires = NULL WHERE id = ?", (r["id"],))
            log.event("job.lease_expired", level=logging.WARNING, job=r["id"], owner=r["lease_owner"])
        else:
            c.execute("UPDATE jobs SET state = 'failed', finished_at = ?, error = ?, lease_owner = NULL"
                      " WHERE id = ?", (t, "worker lost (lease expired)" + SUPERSEDED, r["id"]))
            audit.append(c, "job.failed", "jobs", study_uid=r["study_uid"], job=r["id"], attempt=r["attempts"],
                         state="failed", error="lease expired" + SUPERSEDED)
            log.event("job.failed", level=logging.WARNING, job=r["id"], study=r["study_uid"], reason="lease expired" + SUPERSEDED)
    for r in c.execute("SELECT id, kind, study_uid FROM jobs WHERE state = 'queued' AND queue_job IS NULL"
                       " ORDER BY id").fetchall():
        _defer(c, r["id"], r["kind"], r["study_uid"])


def _queue_finished(c, job_id: int, succeeded: bool) -> None:
    """On PostgreSQL: end the job's procrastinate job too."""
    if engine.is_pg(c):
        pgqueue.finish_open(c, "jobs", job_id, succeeded)


def worker_owner(index: int) -> str:
    """Lease holder name of worker thread `index` of this process (hccnode.store.lease identity)."""
    return f"{lease.owner_id()}/{index}"


def heartbeat(store: Store, job_id: int, owner: str, lease_seconds: float) -> bool:
    """Renew the lease; False if this owner no longer holds the job."""
    t = now()
    with store.tx() as c:
        n = c.execute("UPDATE jobs SET lease_expires = ?, heartbeat_at = ? WHERE id = ? AND lease_owner = ?"
                      " AND state = 'running'", (t + lease_seconds, t, job_id, owner)).rowcount
        if n and engine.is_pg(c) and not pgqueue.heartbeat(c, owner):
            n = 0   # the worker was unregistered (its process found gone): its job goes to the next claim
    return n == 1


def complete(store: Store, job_id: int, owner: str, result: dict) -> bool:
    with store.tx() as c:
        n = c.execute("UPDATE jobs SET state = 'done', finished_at = ?, result = ?, lease_owner = NULL,"
                      " lease_expires = NULL WHERE id = ? AND lease_owner = ? AND state = 'running'",
                      (now(), json.dumps(result, sort_keys=True), job_id, owner)).rowcount
        if n:
            _queue_finished(c, job_id, succeeded=True)
            study_uid = c.execute("SELECT study_uid FROM jobs WHERE id = ?", (job_id,)).fetchone()["study_uid"]
            hashes = [r["sha256"] for r in c.execute("SELECT sha256 FROM instances WHERE study_uid = ?", (study_uid,))]
            audit.append(c, "job.done", "worker", study_uid=study_uid, job=job_id,
                         input_hashes={"instances": audit.digest(hashes)},
                         output_uids=result.get("output_uids", []), card_versions=result.get("card_versions", []))
    if n:
        log.event("job.done", job=job_id)
    return n == 1


def not_applicable(store: Store, job_id: int, owner: str, result: dict) -> bool:
    """End a running job in state not_applicable: `result[NOT_APPLICABLE]` says why (kept as the
    job's error text too, so listings show it). Final: not retried, whatever attempts remain."""
    reason = str(result[NOT_APPLICABLE])
    with store.tx() as c:
        n = c.execute("UPDATE jobs SET state = ?, finished_at = ?, result = ?, error = ?, lease_owner = NULL,"
                      " lease_expires = NULL WHERE id = ? AND lease_owner = ? AND state = 'running'",
                      (NOT_APPLICABLE, now(), json.dumps(result, sort_keys=True), reason[:2000], job_id, owner)).rowcount
        if n:
            _queue_finished(c, job_id, succeeded=True)
            study_uid = c.execute("SELECT study_uid FROM jobs WHERE id = ?", (job_id,)).fetchone()["study_uid"]
            audit.append(c, "job.not_applicable", "worker", study_uid=study_uid, job=job_id, reason=reason[:500])
    if n:
        log.event("job.not_applicable", job=job_id, reason=reason[:200])
    return n == 1


def fail(store: Store, job_id: int, owner: str, error: str) -> str | None:
    """Record a failed attempt: queued again while attempts remain, else failed. Returns the new state."""
    with store.tx() as c:
        r = c.execute("SELECT * FROM jobs WHERE id = ? AND lease_owner = ? AND state = 'running'",
                      (job_id, owner)).fetchone()
        if r is None:
            return None
        state = "queued" if r["attempts"] < r["max_attempts"] else "failed"
        if engine.is_pg(c):
            if state == "queued" and not _back_in_queue(c, r):
                state, error = "failed", error + SUPERSEDED
            elif state == "failed":
                _queue_finished(c, job_id, succeeded=False)
        audit.append(c, "job.failed", "worker", study_uid=r["study_uid"], job=job_id, attempt=r["attempts"],
                     state=state, error=error[:200])
        c.execute("UPDATE jobs SET state = ?, error = ?, lease_owner = NULL, lease_expires = NULL,"
                  " finished_at = CASE WHEN ? = 'failed' THEN ? END WHERE id = ?",
                  (state, error[:2000], state, now(), job_id))
    log.event("job.failed" if state == "failed" else "job.retry", level=logging.WARNING, job=job_id, error=error[:200])
    return state


def listing(store: Store, state: str | None = None, limit: int = 50) -> list[dict]:
    """The latest jobs (newest first), only those in `state` when given; `error` holds the
    failure, or for a not_applicable job its reason."""
    where, params = ("WHERE state = ?", [state]) if state else ("", [])
    return store.query(f"SELECT id, kind, study_uid, study_seq, reason, state, attempts, created_at, finished_at, error"
                       f" FROM jobs {where} ORDER BY id DESC LIMIT ?", tuple(params + [limit]))


def get(store: Store, job_id: int) -> dict | None:
    rows = store.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
    return rows[0] if rows else None


def load(store: Store, job_id: int) -> Job | None:
    """Job `job_id` as a worker runs it (its study and the study's seq it analyses), or None."""
    row = get(store, job_id)
    return Job.from_row(row) if row else None


STATUS_COLUMNS = "id, state, reason, study_seq, attempts, max_attempts, created_at, started_at, finished_at, error"


def latest_of_study(store: Store, study_uid: str) -> dict | None:
    """The study's newest job (STATUS_COLUMNS), or None."""
    rows = store.query(f"SELECT {STATUS_COLUMNS} FROM jobs WHERE study_uid = ? ORDER BY id DESC LIMIT 1", (study_uid,))
    return rows[0] if rows else None


def counts(store: Store) -> dict[str, int]:
    """Jobs per state."""
    return {r["state"]: r["n"] for r in store.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}


def failed_studies(store: Store, limit: int = 50) -> list[dict]:
    """Jobs (study_uid and STATUS_COLUMNS) that failed and are their study's newest of their kind, newest first:
    a later successful run clears a failure."""
    cols = ", ".join(f"j.{c}" for c in ("id", "study_uid", *STATUS_COLUMNS.split(", ")[1:]))
    return store.query(
        f"SELECT {cols} FROM jobs j WHERE j.state = 'failed'"
        " AND j.id = (SELECT MAX(id) FROM jobs k WHERE k.kind = j.kind AND k.study_uid = j.study_uid)"
        " ORDER BY j.id DESC LIMIT ?", (limit,))
