"""The outbox: DICOM objects waiting to be sent, as rows that survive restarts.

A row is marked sent only after the destination answered success (or a storage warning)
for that instance. A failure, a refused association or an unreachable peer schedules a
retry with exponential backoff (`retry_base_seconds` doubling up to `retry_max_seconds`);
after `max_attempts` the row is failed and waits for `hccnode outbox --retry-failed`.
Rows being sent hold a lease naming the sending process: a lease of a process that is gone
(a node killed mid-send) is taken back at once, any other when it expires.

On PostgreSQL each row is also a procrastinate job (hccnode.store.pgqueue), in the same
transaction: its lock (destination and SOP Instance UID) lets one sender at a time send an output
to a destination, its queueing lock keeps one of them waiting, and a retry is the job due again at
the backoff time. A sender that stopped heartbeating (it heartbeats when it claims and records a
result) for SEND_LEASE_SECONDS loses its rows to the next claim, on any host.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hccnode import log
from hccnode.store import audit, engine, lease, pgqueue
from hccnode.store.db import Store, added_column, now, schema
from hccnode.store.spool import meta_uids

SCHEMA = schema(
    """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,      -- AE@host:port, or a DICOMweb base URL (no credentials)
    path TEXT NOT NULL,             -- absolute, or relative to the data directory
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    study_uid TEXT,
    job_id INTEGER,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_expires REAL,
    lease_owner TEXT,               -- the sending process (hccnode.store.lease)
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_sop ON outbox(destination, sop_uid);
"""
)
added_column("outbox", "lease_owner", "TEXT")

SEND_LEASE_SECONDS = 300.0  # longer than any single association should take


@dataclass
class Item:
    id: int
    destination: str
    path: Path
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    attempts: int
    study_uid: str | None = None


def enqueue(store: Store, destination: str, path: str | Path, study_uid: str | None = None,
            job_id: int | None = None) -> int | None:
    """Queue one DICOM file for `destination`; returns the row id, or None if the same
    instance is already waiting for that destination. ValueError (naming the file) when it is
    not a Part 10 file with its SOP Class, Instance and Transfer Syntax UIDs."""
    p = Path(path)
    sop_class, sop_uid, syntax = meta_uids(p if p.is_absolute() else store.data_dir / p, required=True)
    with store.tx() as c:
        if c.execute("SELECT 1 FROM outbox WHERE destination = ? AND sop_uid = ? AND path = ?"
                     " AND state IN ('pending', 'sending')", (destination, sop_uid, str(p))).fetchone():
            return None
        t = now()
        row_id = engine.insert_id(
            c, "INSERT INTO outbox (destination, path, sop_uid, sop_class_uid, transfer_syntax, study_uid, job_id,"
            " state, next_attempt_at, created_at) VALUES (?,?,?,?,?,?,?, 'pending', ?, ?)",
            (destination, str(p), sop_uid, sop_class, syntax, study_uid, job_id, t, t))
        if engine.is_pg(c):
            _defer(c, row_id, destination, sop_uid, str(p), t)
        audit.append(c, "output.queued", "outbox", study_uid=study_uid, output_uids=[sop_uid],
                     destination=destination, job=job_id, outbox=row_id)
    log.event("outbox.queued", id=row_id, destination=destination, sop=sop_uid)
    return row_id


def claim_due(store: Store, limit: int = 64, ids: list[int] | None = None) -> dict[str, list[Item]]:
    """Lease due rows, grouped by destination (one association each): pending rows whose time
    has come, and sending rows whose lease expired or whose holder died mid-send."""
    if store.engine == engine.POSTGRESQL:
        return _claim_due_pg(store, limit, ids)
    t = now()
    dead = lease.dead_holders(store.conn(), "outbox", "sending")
    sql = ("SELECT * FROM outbox WHERE ((state = 'pending' AND next_attempt_at <= ?)"
           " OR (state = 'sending' AND (lease_expires < ?"
           f" OR lease_owner IN {engine.in_list(len(dead))})))")
    params: list = [t, t, *dead]
    if ids is not None:
        sql += f" AND id IN {engine.in_list(len(ids))}"
        params += ids
    sql += " ORDER BY id LIMIT ?"
    params.append(limit)
    groups: dict[str, list[Item]] = {}
    if not store.conn().execute(sql, params).fetchone():  # idle: no write lock taken
        return groups
    owner = lease.owner_id()
    with store.tx() as c:
        for r in c.execute(sql, params).fetchall():
            if r["state"] == "sending":
                _taken_back(r, dead)
            _lease(c, store, r, t, owner, groups)
    return groups


def _taken_back(r, dead: list[str]) -> None:
    log.event("outbox.lease_taken_back", level=logging.WARNING, id=r["id"], sop=r["sop_uid"], holder=r["lease_owner"],
              reason="holder gone" if r["lease_owner"] in dead else "lease expired")


def _lease(c, store: Store, r, t: float, owner: str, groups: dict[str, list[Item]]) -> None:
    """Mark row `r` being sent by `owner` (this process) and add it to its destination's group."""
    c.execute("UPDATE outbox SET state = 'sending', lease_expires = ?, lease_owner = ?,"
              " attempts = attempts + 1 WHERE id = ?", (t + SEND_LEASE_SECONDS, owner, r["id"]))
    p = Path(r["path"])
    groups.setdefault(r["destination"], []).append(Item(
        r["id"], r["destination"], p if p.is_absolute() else store.data_dir / p, r["sop_uid"],
        r["sop_class_uid"], r["transfer_syntax"], r["attempts"] + 1, r["study_uid"]))


# -- PostgreSQL: procrastinate ------------------------------------------------------------------

def _locks(destination: str, sop_uid: str, path: str) -> tuple[str, str]:
    """The procrastinate lock (one sender of an output to a destination) and queueing lock (one
    waiting row of a file for a destination) of a row."""
    lock = f"send:{destination}:{sop_uid}"
    return lock, f"{lock}:{path}"


def _defer(c, row_id: int, destination: str, sop_uid: str, path: str, at: float) -> None:
    queue_job = pgqueue.defer(c, pgqueue.OUTBOX_QUEUE, "send", *_locks(destination, sop_uid, path), row_id, at)
    c.execute("UPDATE outbox SET queue_job = ? WHERE id = ?", (queue_job, row_id))


def _again(c, r, at: float) -> None:
    """Make row `r`'s procrastinate job due again at `at` (a new one if it has none)."""
    status = pgqueue.status(c, r["queue_job"]) if r["queue_job"] is not None else None
    if status in ("doing", "failed"):
        pgqueue.retry(c, r["queue_job"], at, pgqueue.OUTBOX_QUEUE)
    elif status is None:
        _defer(c, r["id"], r["destination"], r["sop_uid"], r["path"], at)


# Rows that procrastinate does not know to be claimable: sending with an expired lease, and pending
# rows without a procrastinate job (copied by `hccnode store migrate`).
_ADRIFT_SQL = ("SELECT 1 FROM outbox WHERE (state = 'sending' AND lease_expires < ?)"
               " OR (state = 'pending' AND queue_job IS NULL) LIMIT 1")


def _claim_due_pg(store: Store, limit: int, ids: list[int] | None) -> dict[str, list[Item]]:
    """claim_due on PostgreSQL: take back the rows of lost senders (heartbeat older than
    SEND_LEASE_SECONDS on any host, a process of this host that is gone, an expired lease), then
    fetch due rows whose output no other sender sends to that destination; with `ids`, only those."""
    t = now()
    read = store.conn()
    dead = lease.dead_holders(read, "outbox", "sending")
    adrift = read.execute(_ADRIFT_SQL, (t,)).fetchone() is not None
    groups: dict[str, list[Item]] = {}
    if not dead and not adrift and not pgqueue.pending(read, pgqueue.OUTBOX_QUEUE, SEND_LEASE_SECONDS):
        return groups   # idle: no write lock taken
    owner = lease.owner_id()
    with store.tx() as c:
        lost = pgqueue.stalled(c, pgqueue.OUTBOX_QUEUE, SEND_LEASE_SECONDS)
        if dead or adrift or lost:
            _recover_pg(c, t, dead, lost)
        queue = pgqueue.OUTBOX_QUEUE
        if ids is not None:  # only these: fetched from a queue of this claim's own, moved back below
            chosen = [r[0] for r in c.execute(f"SELECT queue_job FROM outbox WHERE id IN {engine.in_list(len(ids))}"
                                              " AND queue_job IS NOT NULL", tuple(ids))]
            queue = f"{pgqueue.OUTBOX_QUEUE}:{owner}"
            pgqueue.move(c, chosen, queue)
        worker_id = pgqueue.worker(c, owner)
        for _ in range(limit):
            got = pgqueue.fetch(c, queue, worker_id)
            if got is None:
                break
            r = c.execute("SELECT * FROM outbox WHERE id = ? AND state = 'pending'", (got[1],)).fetchone()
            if r is not None:  # else: a row being sent by another holder, left to it
                _lease(c, store, r, t, owner, groups)
        if ids is not None:
            pgqueue.move(c, chosen, pgqueue.OUTBOX_QUEUE)
    return groups


def _recover_pg(c, t: float, dead: list[str], lost: list[int]) -> None:
    """Make due again the rows being sent by holders that are gone (`dead`), whose procrastinate job
    is stalled (`lost`) or whose lease expired; queue the rows that have no procrastinate job."""
    pgqueue.prune(c)
    for holder in dead:
        pgqueue.forget(c, holder)
    for r in c.execute(f"SELECT * FROM outbox WHERE state = 'sending' AND (lease_expires < ?"
                       f" OR lease_owner IN {engine.in_list(len(dead))} OR queue_job = ANY(?::bigint[]))"
                       " ORDER BY id", (t, *dead, lost)).fetchall():
        _taken_back(r, dead)
        c.execute("UPDATE outbox SET state = 'pending', next_attempt_at = ?, lease_expires = NULL,"
                  " lease_owner = NULL WHERE id = ?", (t, r["id"]))
        _again(c, r, t)
    for r in c.execute("SELECT * FROM outbox WHERE state = 'pending' AND queue_job IS NULL ORDER BY id").fetchall():
        _defer(c, r["id"], r["destination"], r["sop_uid"], r["path"], r["next_attempt_at"])


def _sender_alive(c) -> None:
    """On PostgreSQL: this sender's heartbeat (it records a result, so it is alive)."""
    if engine.is_pg(c):
        pgqueue.heartbeat(c, lease.owner_id())


def _queue_finished(c, row_id: int, sent: bool) -> None:
    if engine.is_pg(c):
        pgqueue.finish_open(c, "outbox", row_id, sent)


def mark_sent(store: Store, item: Item, status: int) -> None:
    with store.tx() as c:
        c.execute("UPDATE outbox SET state = 'sent', sent_at = ?, last_status = ?, last_error = NULL,"
                  " lease_expires = NULL, lease_owner = NULL WHERE id = ?", (now(), status, item.id))
        _queue_finished(c, item.id, sent=True)
        _sender_alive(c)
        audit.append(c, "output.sent", "forwarder", study_uid=item.study_uid, output_uids=[item.sop_uid],
                     destination=item.destination, status=f"0x{status:04X}", attempt=item.attempts)
    log.event("outbox.sent", id=item.id, destination=item.destination, sop=item.sop_uid, status=f"0x{status:04X}")


def mark_failed(store: Store, item: Item, error: str, status: int | None, base: float, cap: float,
                max_attempts: int) -> str:
    """Schedule a retry with exponential backoff, or fail the row; returns the new state."""
    delay = min(cap, base * 2 ** max(0, item.attempts - 1))
    state = "failed" if item.attempts >= max_attempts else "pending"
    with store.tx() as c:
        due = now() + delay
        c.execute("UPDATE outbox SET state = ?, next_attempt_at = ?, last_status = ?, last_error = ?,"
                  " lease_expires = NULL, lease_owner = NULL WHERE id = ?", (state, due, status, error[:500], item.id))
        if engine.is_pg(c):
            if state == "pending":
                _again(c, c.execute("SELECT * FROM outbox WHERE id = ?", (item.id,)).fetchone(), due)
            else:
                _queue_finished(c, item.id, sent=False)
            _sender_alive(c)
        audit.append(c, "output.send_failed", "forwarder", study_uid=item.study_uid, output_uids=[item.sop_uid],
                     destination=item.destination, status=None if status is None else f"0x{status:04X}",
                     attempt=item.attempts, state=state, error=error[:200])
    log.event("outbox.retry" if state == "pending" else "outbox.failed", level=logging.WARNING, id=item.id,
              destination=item.destination, sop=item.sop_uid, attempt=item.attempts, error=error[:200],
              retry_in=round(delay, 1) if state == "pending" else None)
    return state


def retry_failed(store: Store) -> int:
    """Put failed rows back in the queue, due now. On PostgreSQL a row whose output waits for its
    destination already (queued again since) stays failed."""
    t = now()
    with store.tx() as c:
        if not engine.is_pg(c):
            return c.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?"
                             " WHERE state = 'failed'", (t,)).rowcount
        n = 0
        for r in c.execute("SELECT * FROM outbox WHERE state = 'failed' ORDER BY id").fetchall():
            if pgqueue.waiting(c, _locks(r["destination"], r["sop_uid"], r["path"])[1]) is None:
                c.execute("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ? WHERE id = ?", (t, r["id"]))
                _again(c, r, t)
                n += 1
        return n


def listing(store: Store, state: str | None = None, limit: int = 50) -> list[dict]:
    """The latest rows (newest first), only those in `state` when given."""
    where, params = ("WHERE state = ?", [state]) if state else ("", [])
    return store.query(f"SELECT id, destination, sop_uid, state, attempts, next_attempt_at, last_status, last_error,"
                       f" sent_at FROM outbox {where} ORDER BY id DESC LIMIT ?", tuple(params + [limit]))


def counts(store: Store) -> dict[str, int]:
    return {r["state"]: r["n"] for r in store.query("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")}


def open_rows(store: Store, ids: list[int]) -> list[dict]:
    if not ids:
        return []
    return store.query(f"SELECT * FROM outbox WHERE id IN {engine.in_list(len(ids))} ORDER BY id", tuple(ids))


STATUS_COLUMNS = ("id, destination, sop_uid, sop_class_uid, study_uid, state, attempts, next_attempt_at, last_status,"
                  " last_error, created_at, sent_at")
# Waiting after a failed attempt, or being sent again (claiming counts the attempt being made).
_RETRYING = "FROM outbox WHERE (state = 'pending' AND attempts > 0) OR (state = 'sending' AND attempts > 1)"


def counts_of_study(store: Store, study_uid: str) -> dict[str, int]:
    """The study's rows per state."""
    return {r["state"]: r["n"] for r in store.query(
        "SELECT state, COUNT(*) AS n FROM outbox WHERE study_uid = ? GROUP BY state", (study_uid,))}


def failed_rows(store: Store, limit: int = 50) -> list[dict]:
    """Rows that failed for good (STATUS_COLUMNS), newest first."""
    return store.query(f"SELECT {STATUS_COLUMNS} FROM outbox WHERE state = 'failed' ORDER BY id DESC LIMIT ?", (limit,))


def retrying_rows(store: Store, limit: int = 50) -> tuple[list[dict], int]:
    """Rows waiting to be sent again or being sent again (STATUS_COLUMNS, newest first), and how many there are."""
    rows = store.query(f"SELECT {STATUS_COLUMNS} {_RETRYING} ORDER BY id DESC LIMIT ?", (limit,))
    return rows, store.conn().execute(f"SELECT COUNT(*) {_RETRYING}").fetchone()[0]


def oldest_waiting(store: Store) -> float | None:
    """When the oldest row still to send was queued (epoch seconds), or None."""
    return store.conn().execute("SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'sending')").fetchone()[0]
