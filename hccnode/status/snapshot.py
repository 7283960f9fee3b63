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
from hccnode.store import jobs, labs, outbox, studies
from hccnode.store.db import Store
from hccnode.store.phases import stored_phases

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
    recent = studies.recent(store, limit)
    for s in recent:
        uid = s["study_uid"]
        s["first_received"], s["last_received"] = iso(s["first_received"]), iso(s["last_received"])
        s["series"] = studies.series_counts(store, uid)
        s["instances"] = sum(x["instances"] for x in s["series"])
        s["phases"] = [{k: p[k] for k in PHASE_FIELDS} for p in stored_phases(store, uid)]
        for p in s["phases"]:
            p["decided_at"] = iso(p["decided_at"])
        job = jobs.latest_of_study(store, uid)
        s["job"] = _job_row(job) if job else None
        s["outputs"] = outbox.counts_of_study(store, uid)
    return recent


def _job_row(r: dict) -> dict:
    for k in ("created_at", "started_at", "finished_at"):
        r[k] = iso(r[k])
    if r.get("error"):
        r["error"] = r["error"][:300]
    return r


def _jobs(store: Store) -> dict[str, Any]:
    # A study counts as failed while its newest job is failed; a later successful run clears it.
    return {"counts": jobs.counts(store), "failed_studies": [_job_row(r) for r in jobs.failed_studies(store)]}


def _outbox(store: Store, now: float) -> dict[str, Any]:
    failed = outbox.failed_rows(store)
    retrying, n_retrying = outbox.retrying_rows(store)
    oldest = outbox.oldest_waiting(store)
    for r in failed + retrying:
        for k in ("next_attempt_at", "created_at", "sent_at"):
            r[k] = iso(r[k])
        r["last_status"] = None if r["last_status"] is None else f"0x{r['last_status']:04X}"
    return {"counts": outbox.counts(store), "failed": failed, "retrying": retrying, "retrying_count": n_retrying,
            "oldest_waiting_seconds": None if oldest is None else round(now - oldest, 1)}


def _ingest(store: Store, now: float) -> dict[str, Any]:
    ingest = studies.ingest_summary(store, now - DAY_SECONDS)
    return {"instances": ingest["instances"], "quarantined_last_24h": ingest["quarantined"],
            "last_received": iso(ingest["last_received"])}


def _last_message(store: Store, outcomes: tuple[str, ...] | None) -> dict | None:
    r = labs.last_message(store, "hl7", outcomes)
    if r is not None:
        r["received_at"] = iso(r["received_at"])
    return r


def _labs(store: Store, cfg: Config, started_at: float, now: float) -> dict[str, Any]:
    last_epoch = labs.last_received(store, "hl7")
    counts = labs.outcome_counts(store, "hl7", now - DAY_SECONDS)
    # Silence is counted from the last message, or from start-up when none came since.
    since = max(started_at, last_epoch or 0.0)
    return {"hl7_enabled": cfg.hl7.enabled, "last_received": _last_message(store, None),
            "last_accepted": _last_message(store, ACCEPTED), "last_rejected": _last_message(store, REJECTED),
            "messages_last_24h": counts,
            "silent_seconds": round(now - since, 1),
            "results_stored": labs.result_count(store),
            "last_csv_import": iso(labs.last_received(store, "csv"))}


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
