"""What the status page shows: one read of the database turned into plain data, and the health verdict.

`collect()` reads only columns that carry no patient identity: study and series UIDs, dates,
descriptions, modality, counts, job and outbox states and errors, lab message metadata
(`labs_raw` without its `raw` bytes; `labs` only counted). Never `studies.patient_key`,
`labs.patient_id` or any raw message or DICOM file. `health()` is a pure function of that data.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from hccnode import RESEARCH_USE, __version__
from hccnode.config import Config
from hccnode.imaging.phase_store import stored_phases
from hccnode.store.db import Store
from hccnode.store.outbox import counts as outbox_counts

DAY_SECONDS = 86400.0
REJECTED = ("AE", "AR", "incomplete")  # labs_raw outcomes of messages not accepted
ACCEPTED = ("AA", "duplicate")          # a duplicate is a resend of an accepted message
PHASE_FIELDS = ("series_uid", "series_number", "series_description", "kind", "confidence", "phase",
                "phase_confidence", "kev", "b_values", "reasons", "decided_at", "rules_version")


def iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC ('2026-01-01T08:00:00Z'), None stays None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def collect(store: Store, cfg: Config, started_at: float, now: float | None = None) -> dict[str, Any]:
    """The node's state as JSON-ready data (see the module docstring for what is read)."""
    now = time.time() if now is None else now
    snap = {
        "generated_at": iso(now),
        "node": _node(cfg, started_at, now),
        "studies": _studies(store, cfg.status.recent_studies),
        "jobs": _jobs(store),
        "outbox": _outbox(store, now),
        "ingest": _ingest(store, now),
        "labs": _labs(store, cfg, started_at, now),
        "research_use": RESEARCH_USE,
    }
    snap["health"] = health(snap, cfg.status.lab_silent_hours if cfg.hl7.enabled else 0.0)
    return snap


def _node(cfg: Config, started_at: float, now: float) -> dict[str, Any]:
    return {"version": __version__, "started_at": iso(started_at), "uptime_seconds": round(now - started_at, 1),
            "ae_title": cfg.node.ae_title, "dicom_port": cfg.node.port,
            "dicom_tls_port": cfg.tls.port if cfg.tls.enabled else None,
            "hl7_port": cfg.hl7.port if cfg.hl7.enabled else None,
            "destinations": list(cfg.forward.destinations), "workers": cfg.worker_processes()}


def _studies(store: Store, limit: int) -> list[dict[str, Any]]:
    studies = store.query(
        "SELECT study_uid, study_date, study_time, study_description, first_received, last_received, seq"
        " FROM studies ORDER BY last_received DESC, study_uid LIMIT ?", (limit,))
    for s in studies:
        uid = s["study_uid"]
        s["first_received"], s["last_received"] = iso(s["first_received"]), iso(s["last_received"])
        s["series"] = store.query(
            "SELECT s.series_uid, s.series_number, s.modality, s.series_description, COUNT(i.sop_uid) AS instances"
            " FROM series s LEFT JOIN instances i ON i.series_uid = s.series_uid WHERE s.study_uid = ?"
            " GROUP BY s.series_uid ORDER BY s.series_number, s.series_uid", (uid,))
        s["instances"] = sum(x["instances"] for x in s["series"])
        s["phases"] = [{k: p[k] for k in PHASE_FIELDS} for p in stored_phases(store, uid)]
        for p in s["phases"]:
            p["decided_at"] = iso(p["decided_at"])
        job = store.query(
            "SELECT id, state, reason, study_seq, attempts, max_attempts, created_at, started_at, finished_at, error"
            " FROM jobs WHERE study_uid = ? ORDER BY id DESC LIMIT 1", (uid,))
        s["job"] = _job_row(job[0]) if job else None
        s["outputs"] = {r["state"]: r["n"] for r in store.query(
            "SELECT state, COUNT(*) AS n FROM outbox WHERE study_uid = ? GROUP BY state", (uid,))}
    return studies


def _job_row(r: dict) -> dict:
    for k in ("created_at", "started_at", "finished_at"):
        r[k] = iso(r[k])
    if r.get("error"):
        r["error"] = r["error"][:300]
    return r


def _jobs(store: Store) -> dict[str, Any]:
    counts = {r["state"]: r["n"] for r in store.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
    # A study counts as failed while its newest job is failed; a later successful run clears it.
    failed = store.query(
        "SELECT j.id, j.study_uid, j.state, j.reason, j.study_seq, j.attempts, j.max_attempts, j.created_at,"
        " j.started_at, j.finished_at, j.error FROM jobs j"
        " WHERE j.state = 'failed' AND j.id = (SELECT MAX(id) FROM jobs k WHERE k.kind = j.kind AND k.study_uid = j.study_uid)"
        " ORDER BY j.id DESC LIMIT 50")
    return {"counts": counts, "failed_studies": [_job_row(r) for r in failed]}


def _outbox(store: Store, now: float) -> dict[str, Any]:
    cols = ("id, destination, sop_uid, sop_class_uid, study_uid, state, attempts, next_attempt_at, last_status,"
            " last_error, created_at, sent_at")
    failed = store.query(f"SELECT {cols} FROM outbox WHERE state = 'failed' ORDER BY id DESC LIMIT 50")
    # Waiting after a failed attempt, or being sent again (claiming counts the attempt being made).
    retry_sql = "FROM outbox WHERE (state = 'pending' AND attempts > 0) OR (state = 'sending' AND attempts > 1)"
    retrying = store.query(f"SELECT {cols} {retry_sql} ORDER BY id DESC LIMIT 50")
    n_retrying = store.conn().execute(f"SELECT COUNT(*) {retry_sql}").fetchone()[0]
    oldest = store.conn().execute("SELECT MIN(created_at) FROM outbox WHERE state IN ('pending', 'sending')").fetchone()[0]
    for r in failed + retrying:
        for k in ("next_attempt_at", "created_at", "sent_at"):
            r[k] = iso(r[k])
        r["last_status"] = None if r["last_status"] is None else f"0x{r['last_status']:04X}"
    return {"counts": outbox_counts(store), "failed": failed, "retrying": retrying, "retrying_count": n_retrying,
            "oldest_waiting_seconds": None if oldest is None else round(now - oldest, 1)}


def _ingest(store: Store, now: float) -> dict[str, Any]:
    one = store.conn().execute
    return {"instances": one("SELECT COUNT(*) FROM instances").fetchone()[0],
            "quarantined_last_24h": one("SELECT COUNT(*) FROM quarantine WHERE received_at >= ?",
                                        (now - DAY_SECONDS,)).fetchone()[0],
            "last_received": iso(one("SELECT MAX(received_at) FROM instance_versions").fetchone()[0])}


def _last_message(store: Store, outcomes: tuple[str, ...] | None) -> dict | None:
    sql = "SELECT received_at, outcome, reason, sending_facility, message_type, control_id FROM labs_raw WHERE source = 'hl7'"
    params: tuple = ()
    if outcomes:
        sql += f" AND outcome IN ({','.join('?' * len(outcomes))})"
        params = outcomes
    rows = store.query(sql + " ORDER BY id DESC LIMIT 1", params)
    if not rows:
        return None
    r = rows[0]
    r["received_at"] = iso(r["received_at"])
    return r


def _labs(store: Store, cfg: Config, started_at: float, now: float) -> dict[str, Any]:
    last_epoch = store.conn().execute("SELECT MAX(received_at) FROM labs_raw WHERE source = 'hl7'").fetchone()[0]
    counts = {r["outcome"]: r["n"] for r in store.query(
        "SELECT outcome, COUNT(*) AS n FROM labs_raw WHERE source = 'hl7' AND received_at >= ? GROUP BY outcome",
        (now - DAY_SECONDS,))}
    # Silence is counted from the last message, or from start-up when none came since.
    since = max(started_at, last_epoch or 0.0)
    return {"hl7_enabled": cfg.hl7.enabled, "last_received": _last_message(store, None),
            "last_accepted": _last_message(store, ACCEPTED), "last_rejected": _last_message(store, REJECTED),
            "messages_last_24h": counts,
            "silent_seconds": round(now - since, 1),
            "results_stored": store.conn().execute("SELECT COUNT(*) FROM labs").fetchone()[0],
            "last_csv_import": iso(store.conn().execute(
                "SELECT MAX(received_at) FROM labs_raw WHERE source = 'csv'").fetchone()[0])}


def health(snap: dict[str, Any], lab_silent_hours: float) -> dict[str, Any]:
    """'ok', or 'degraded' with one reason per problem an operator should look at.

    Problems: outbox rows failed for good (need `hccnode outbox --retry-failed`) or being
    retried (a destination refuses or is unreachable), studies whose newest analysis failed,
    and an HL7 feed silent for more than `lab_silent_hours` (0: not checked).
    """
    reasons = []
    out = snap["outbox"]
    if out["counts"].get("failed"):
        reasons.append(f"outbox: {out['counts']['failed']} item(s) failed after every retry")
    if out["retrying_count"]:
        dests = sorted({r["destination"] for r in out["retrying"]})
        reasons.append(f"outbox: {out['retrying_count']} item(s) waiting to be retried for {', '.join(dests)}")
    if snap["jobs"]["failed_studies"]:
        reasons.append(f"jobs: analysis failed for {len(snap['jobs']['failed_studies'])} study(ies)")
    labs = snap["labs"]
    if lab_silent_hours > 0 and labs["silent_seconds"] > lab_silent_hours * 3600:
        reasons.append(f"lab feed: no HL7 message for {labs['silent_seconds'] / 3600:.1f} h"
                       f" (limit {lab_silent_hours:g} h)")
    return {"status": "degraded" if reasons else "ok", "reasons": reasons}
