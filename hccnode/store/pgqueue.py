"""The job queue and the outbox on PostgreSQL run on procrastinate (procrastinate.readthedocs.io),
a PostgreSQL task queue, with its tables in the node's database.

What procrastinate gives the node there:
- one waiting job per key: its `queueing_lock` (a unique index on the lock of `todo` jobs), so a
  study has at most one analysis waiting;
- one running job per key: its `lock` (a unique index on the lock of `doing` jobs; fetching skips
  a job whose lock a running or an older waiting job holds), so two workers never analyse one
  study at once, and a change while one runs queues exactly one more;
- fetching with `FOR UPDATE SKIP LOCKED`, retries at a set time (the outbox's backoff);
- worker heartbeats (`procrastinate_workers.last_heartbeat`): the jobs of a worker that stopped
  heartbeating, on any host, are found stalled and retried (each queue with its own threshold).

Procrastinate's own worker is asyncio and calls registered task functions; the node's worker is a
synchronous loop that claims, heartbeats and completes (hccnode.worker), and each of the node's
state changes commits together with its audit entry. So the node calls procrastinate's SQL
functions (`procrastinate_*_v1`/`_v2`, its stable interface between library and database) inside
its own write transactions: the procrastinate job, the node's row (state names, study seq,
attempts, history for `hccnode jobs` and the status page) and the audit entry commit together.

Procrastinate's schema is applied once, as step 2 of the node's PostgreSQL schema steps
(`db.PG_STEPS`, recorded in `schema_version`). A later procrastinate release with a changed schema
ships migration files (procrastinate.schema.SchemaManager.get_migrations_path()): they go in as
further steps before the node depends on that release (pyproject pins the major version).
"""

from __future__ import annotations

import json

JOBS_QUEUE = "hccnode.jobs"
OUTBOX_QUEUE = "hccnode.outbox"

NODE_SQL = """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS queue_job BIGINT;      -- its procrastinate_jobs id
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS queue_job BIGINT;
CREATE INDEX IF NOT EXISTS jobs_queue_job ON jobs(queue_job);
CREATE INDEX IF NOT EXISTS outbox_queue_job ON outbox(queue_job);
-- The procrastinate worker of each lease holder (hccnode.store.lease identity, a worker thread's
-- name): gone with the worker when procrastinate prunes it for a stale heartbeat.
CREATE TABLE IF NOT EXISTS queue_workers (
    owner TEXT PRIMARY KEY,
    worker_id BIGINT NOT NULL REFERENCES procrastinate_workers(id) ON DELETE CASCADE
);
"""


def schema_sql() -> str:
    """Procrastinate's schema, then the node's links to it (step 2 of db.PG_STEPS)."""
    from procrastinate.schema import SchemaManager

    return SchemaManager.get_schema() + "\n" + NODE_SQL


def defer(c, queue: str, task: str, lock: str, queueing_lock: str | None, row_id: int, at: float | None = None) -> int:
    """Queue a procrastinate job for the node's row `row_id`, due at `at` (epoch seconds; now when
    None); returns its id. A second waiting job with the same `queueing_lock` is refused by the
    database (UniqueViolation): callers check `waiting` first."""
    return int(c.execute(
        "SELECT (procrastinate_defer_jobs_v1(ARRAY[ROW(?, ?, 0, ?, ?, ?::jsonb, to_timestamp(?))"
        "::procrastinate_job_to_defer_v1]))[1]",
        (queue, task, lock, queueing_lock, json.dumps({"row": row_id}), at)).fetchone()[0])


def waiting(c, queueing_lock: str) -> int | None:
    """The procrastinate job waiting (todo) under `queueing_lock`, or None."""
    r = c.execute("SELECT id FROM procrastinate_jobs WHERE queueing_lock = ? AND status = 'todo'",
                  (queueing_lock,)).fetchone()
    return r[0] if r else None


def worker(c, owner: str) -> int:
    """The procrastinate worker of lease holder `owner`, registered when it has none (or was pruned);
    its heartbeat is renewed."""
    r = c.execute("SELECT worker_id FROM queue_workers WHERE owner = ?", (owner,)).fetchone()
    if r is not None:
        c.execute("SELECT procrastinate_update_heartbeat_v1(?)", (r[0],))
        return r[0]
    worker_id = c.execute("SELECT worker_id FROM procrastinate_register_worker_v1()").fetchone()[0]
    c.execute("INSERT INTO queue_workers (owner, worker_id) VALUES (?, ?)", (owner, worker_id))
    return worker_id


def heartbeat(c, owner: str) -> bool:
    """Renew `owner`'s worker heartbeat; False when it has no worker (pruned: its jobs are stalled)."""
    r = c.execute("SELECT worker_id FROM queue_workers WHERE owner = ?", (owner,)).fetchone()
    if r is None:
        return False
    c.execute("SELECT procrastinate_update_heartbeat_v1(?)", (r[0],))
    return True


def forget(c, owner: str) -> None:
    """Unregister `owner`'s worker (its process is gone): the jobs it held are stalled at once."""
    r = c.execute("SELECT worker_id FROM queue_workers WHERE owner = ?", (owner,)).fetchone()
    if r is not None:
        c.execute("SELECT procrastinate_unregister_worker_v1(?)", (r[0],))


# Workers silent this long are removed (housekeeping; each queue finds its stalled jobs by its own
# threshold, `stalled`): above every queue's threshold, so pruning never decides for a queue.
PRUNE_SECONDS = 3600.0


def prune(c) -> int:
    """Remove workers that have not heartbeat for PRUNE_SECONDS; returns how many."""
    return len(c.execute("SELECT worker_id FROM procrastinate_prune_stalled_workers_v1(?)", (PRUNE_SECONDS,)).fetchall())


# `queue`'s running jobs whose worker is gone (unregistered or pruned) or has not heartbeat for
# `seconds` (procrastinate's query select_stalled_jobs_by_heartbeat, for one queue).
_STALLED = ("FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id"
            " WHERE j.queue_name = ? AND j.status = 'doing'"
            " AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => ?))")


def stalled(c, queue: str, seconds: float) -> list[int]:
    """Ids of `queue`'s running jobs whose worker is gone or has not heartbeat for `seconds`."""
    return [r[0] for r in c.execute(f"SELECT j.id {_STALLED}", (queue, float(seconds)))]


def pending(c, queue: str, seconds: float) -> bool:
    """Is there anything to claim in `queue`: a due waiting job whose lock no running job holds,
    or a stalled one (`stalled`)? A plain read: no lock taken."""
    return c.execute(
        "SELECT 1 FROM procrastinate_jobs j WHERE j.queue_name = ? AND j.status = 'todo'"
        " AND (j.scheduled_at IS NULL OR j.scheduled_at <= now()) AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs o"
        " WHERE o.lock = j.lock AND o.status = 'doing')"
        f" UNION ALL SELECT 1 {_STALLED} LIMIT 1", (queue, queue, float(seconds))).fetchone() is not None


def fetch(c, queue: str, worker_id: int) -> tuple[int, int] | None:
    """Take the next due job of `queue` whose lock is free for `worker_id`: (procrastinate id, the
    node's row id), or None."""
    r = c.execute("SELECT id, args FROM procrastinate_fetch_job_v2(ARRAY[?]::varchar[], ?)", (queue, worker_id)).fetchone()
    if r is None or r[0] is None:
        return None
    args = r[1] if isinstance(r[1], dict) else json.loads(r[1])
    return r[0], int(args["row"])


def status(c, job_id: int) -> str | None:
    r = c.execute("SELECT status FROM procrastinate_jobs WHERE id = ?", (job_id,)).fetchone()
    return r[0] if r else None


def finish(c, job_id: int, succeeded: bool) -> None:
    """End a waiting or running job: succeeded, or failed for good."""
    c.execute("SELECT procrastinate_finish_job_v1(?, ?, false)", (job_id, "succeeded" if succeeded else "failed"))


def finish_open(c, table: str, row_id: int, succeeded: bool) -> None:
    """End the procrastinate job of row `row_id` of `table` (jobs, outbox) if it waits or runs."""
    r = c.execute(f"SELECT p.id FROM {table} t JOIN procrastinate_jobs p ON p.id = t.queue_job"
                  " WHERE t.id = ? AND p.status IN ('todo', 'doing')", (row_id,)).fetchone()
    if r is not None:
        finish(c, r[0], succeeded)


def retry(c, job_id: int, at: float | None = None, queue: str | None = None) -> None:
    """Make a running or failed job wait again, due at `at` (epoch seconds; now when None), in
    `queue` when given."""
    c.execute("SELECT procrastinate_retry_job_v2(?, COALESCE(to_timestamp(?), now()), NULL, ?, NULL)", (job_id, at, queue))


def move(c, job_ids: list[int], queue: str) -> None:
    """Move jobs to another queue: a claimer that wants only these takes them from a queue of its
    own, inside its transaction, and moves them back before it commits."""
    c.execute("UPDATE procrastinate_jobs SET queue_name = ? WHERE id = ANY(?::bigint[])", (queue, job_ids))
