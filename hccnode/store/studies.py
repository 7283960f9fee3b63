"""Queries on the studies the node holds (the `studies` and `series` tables of hccnode.store.db),
and the one input about a study that does not come with its images: the date treatment started.

Paper 003 (Han S et al., Materials and methods, Patients) takes its laboratory results "within
2 weeks prior to treatment" (hccnode.models.p003_pairing.lab_anchor). The site tells the node
that date per MR study (`set_treatment_start`; CLI `hccnode studies treatment-start`, or
`hccnode analyze --treatment-start`); an analysis of a follow-up uses the date set on it, else
the one set on its paired baseline (`effective_treatment_start`). Each analysis records the date
it used with its inputs (hccnode.store.analyses), so `audit reverify` recomputes with that date,
and a new or changed date re-queues every analysed study whose date it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hccnode import log
from hccnode.store import analyses, audit, jobs
from hccnode.store.db import Store, now, schema

SCHEMA = schema(
    """
CREATE TABLE IF NOT EXISTS treatment_starts (
    study_uid TEXT PRIMARY KEY REFERENCES studies(study_uid),
    treatment_start TEXT NOT NULL,  -- ISO 8601 date or date and time, as the site gave it
    actor TEXT NOT NULL,            -- who set it (CLI command)
    recorded_at REAL NOT NULL
);
"""
)

TREATMENT_START = "treatment_start"            # keys of an analysis' recorded inputs
TREATMENT_START_STUDY = "treatment_start_study"
BASELINE_STUDY = "baseline_study"


def study_date_time(store: Store, study_uid: str) -> tuple[str | None, str | None] | None:
    """(Study Date, Study Time) as stored (DICOM DA / TM text), or None for a study the node does not hold."""
    rows = store.query("SELECT study_date, study_time FROM studies WHERE study_uid = ?", (study_uid,))
    return (rows[0]["study_date"], rows[0]["study_time"]) if rows else None


def patient_key(store: Store, study_uid: str) -> str | None:
    """The study's keyed patient hash (None when the study has no Patient ID or is not held)."""
    rows = store.query("SELECT patient_key FROM studies WHERE study_uid = ?", (study_uid,))
    return rows[0]["patient_key"] if rows else None


def earlier_studies(store: Store, patient_key: str, study_uid: str, study_date: str, study_time: str | None,
                    modality: str) -> list[dict]:
    """The patient's other studies with a `modality` series acquired before (date, time), latest first:
    rows of study_uid, study_date, study_time."""
    return store.query(
        "SELECT DISTINCT st.study_uid, st.study_date, st.study_time FROM studies st JOIN series se"
        " ON se.study_uid = st.study_uid WHERE st.patient_key = ? AND st.study_uid != ? AND se.modality = ?"
        " AND (st.study_date < ? OR (st.study_date = ? AND COALESCE(st.study_time, '') < COALESCE(?, '')))"
        " ORDER BY st.study_date DESC, st.study_time DESC",
        (patient_key, study_uid, modality, study_date, study_date, study_time))


def holds(store: Store, study_uid: str) -> bool:
    return bool(store.query("SELECT 1 FROM studies WHERE study_uid = ?", (study_uid,)))


def instances_of(store: Store, study_uid: str) -> list[dict]:
    """The study's instances (series_uid, path, sop_class_uid and the series' number, description and
    modality), by series, instance number and SOP Instance UID."""
    return store.query(
        "SELECT i.series_uid, i.path, i.sop_class_uid, s.series_number, s.series_description, s.modality"
        " FROM instances i JOIN series s ON s.series_uid = i.series_uid WHERE i.study_uid = ?"
        " ORDER BY i.series_uid, i.instance_number, i.sop_uid", (study_uid,))


def instance_path(store: Store, sop_uid: str) -> str | None:
    """The spool path (relative to the data directory) of an instance, or None."""
    rows = store.query("SELECT path FROM instances WHERE sop_uid = ?", (sop_uid,))
    return rows[0]["path"] if rows else None


def recent(store: Store, limit: int) -> list[dict]:
    """The studies received last (study_uid, date, time, description, first and last received, seq), latest first."""
    return store.query(
        "SELECT study_uid, study_date, study_time, study_description, first_received, last_received, seq"
        " FROM studies ORDER BY last_received DESC, study_uid LIMIT ?", (limit,))


def series_counts(store: Store, study_uid: str) -> list[dict]:
    """The study's series (series_uid, series_number, modality, series_description) with their instance counts."""
    return store.query(
        "SELECT s.series_uid, s.series_number, s.modality, s.series_description, COUNT(i.sop_uid) AS instances"
        " FROM series s LEFT JOIN instances i ON i.series_uid = s.series_uid WHERE s.study_uid = ?"
        " GROUP BY s.series_uid ORDER BY s.series_number, s.series_uid", (study_uid,))


def ingest_summary(store: Store, since: float) -> dict:
    """Instances held, datasets quarantined since `since` (epoch seconds), and when the last instance arrived."""
    one = store.conn().execute
    return {"instances": one("SELECT COUNT(*) FROM instances").fetchone()[0],
            "quarantined": one("SELECT COUNT(*) FROM quarantine WHERE received_at >= ?", (since,)).fetchone()[0],
            "last_received": one("SELECT MAX(received_at) FROM instance_versions").fetchone()[0]}


def parse_treatment_start(text: str) -> datetime:
    """A treatment start as the site writes it: YYYY-MM-DD or YYYY-MM-DDTHH:MM; ValueError naming the format."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"treatment start {text!r} is not a date (YYYY-MM-DD) or date and time "
                         "(YYYY-MM-DDTHH:MM)") from None


def treatment_start(store: Store, study_uid: str) -> datetime | None:
    """The treatment start set on this study, or None."""
    rows = store.query("SELECT treatment_start FROM treatment_starts WHERE study_uid = ?", (study_uid,))
    return datetime.fromisoformat(rows[0]["treatment_start"]) if rows else None


def effective_treatment_start(store: Store, study_uid: str,
                              baseline_uid: str | None) -> tuple[datetime | None, str | None]:
    """(date, the study it was set on) for an analysis of `study_uid` paired with `baseline_uid`:
    the date set on the study itself, else the one set on its baseline, else (None, None)."""
    for uid in (study_uid, baseline_uid):
        when = treatment_start(store, uid) if uid else None
        if when is not None:
            return when, uid
    return None, None


def find_study(store: Store, ref: str) -> str | None:
    """The Study Instance UID `ref` names: the UID itself, else the one study whose Accession Number
    is `ref` (read from one stored header per study: a file read per study the node holds)."""
    import pydicom

    if store.query("SELECT 1 FROM studies WHERE study_uid = ?", (ref,)):
        return ref
    found = []
    for row in store.query("SELECT study_uid, MIN(path) AS path FROM instances GROUP BY study_uid"):
        try:
            ds = pydicom.dcmread(store.data_dir / row["path"], stop_before_pixels=True,
                                 specific_tags=["AccessionNumber"])
        except (OSError, ValueError, pydicom.errors.InvalidDicomError):
            continue                      # an unreadable file names no study; the others still do
        if str(ds.get("AccessionNumber") or "").strip() == ref.strip():
            found.append(row["study_uid"])
    if len(found) > 1:
        raise LookupError(f"accession number {ref!r} names {len(found)} studies: give the Study Instance UID")
    return found[0] if found else None


@dataclass(frozen=True)
class TreatmentStartSet:
    study_uid: str
    treatment_start: datetime | None
    changed: bool                                   # False: the same date was set already
    requeued: tuple[tuple[str, int | None], ...]   # (study, job id) re-queued because their date changed


def set_treatment_start(store: Store, study_uid: str, when: datetime | None, actor: str, *,
                        requeue: bool = True, max_attempts: int = 3) -> TreatmentStartSet:
    """Set (or with `when` None, clear) the date treatment started for the MR study `study_uid`
    (a baseline or a follow-up), audited as `study.treatment_start`. With `requeue`, every analysed
    study whose paper-003 lab anchor this changes (the study itself, and the follow-ups paired with
    it as their baseline that have no date of their own) is queued again, as a new lab result
    queues it. LookupError for a study the node does not hold."""
    if study_date_time(store, study_uid) is None:
        raise LookupError(f"study {study_uid} is not in the node's store")
    before = treatment_start(store, study_uid)
    changed = before != when
    if changed:
        with store.tx() as c:
            if when is None:
                c.execute("DELETE FROM treatment_starts WHERE study_uid = ?", (study_uid,))
            else:
                c.execute("INSERT OR REPLACE INTO treatment_starts (study_uid, treatment_start, actor, recorded_at)"
                          " VALUES (?,?,?,?)", (study_uid, when.isoformat(), actor, now()))
            audit.append(c, "study.treatment_start", actor, study_uid=study_uid,
                         patient_key=patient_key(store, study_uid),
                         treatment_start=when.isoformat() if when else None,
                         previous=before.isoformat() if before else None)
    requeued = requeue_stale(store, study_uid, max_attempts) if changed and requeue else []
    return TreatmentStartSet(study_uid, when, changed, tuple(requeued))


def restore_recorded(store: Store, study_uid: str, inputs: dict) -> None:
    """Make the treatment starts in `store` those an analysis of `study_uid` recorded in its
    `inputs` (hccnode.store.analyses): `audit reverify` does this on its scratch copy of the
    database, so the recomputation uses the date the SR used, not one set later."""
    if TREATMENT_START not in inputs:
        return
    with store.tx() as c:
        for uid in {study_uid, inputs.get(BASELINE_STUDY), inputs.get(TREATMENT_START_STUDY)} - {None}:
            c.execute("DELETE FROM treatment_starts WHERE study_uid = ?", (uid,))
        if inputs[TREATMENT_START] is not None:
            c.execute("INSERT INTO treatment_starts (study_uid, treatment_start, actor, recorded_at) VALUES (?,?,?,?)",
                      (inputs[TREATMENT_START_STUDY], inputs[TREATMENT_START], "audit reverify", now()))


def requeue_stale(store: Store, study_uid: str, max_attempts: int = 3) -> list[tuple[str, int | None]]:
    """Queue again every analysed study `stale_analyses` names; returns (study, job id)."""
    out = []
    for uid in stale_analyses(store, study_uid):
        job = jobs.requeue(store, uid, "treatment_start", max_attempts)
        log.event("study.requeued", study=uid, job=job, why=f"treatment start set on study {study_uid}")
        out.append((uid, job))
    return out


def stale_analyses(store: Store, study_uid: str) -> list[str]:
    """Analysed studies whose latest analysis used another paper-003 treatment start than the one
    they would use now, among `study_uid` and the follow-ups paired with it. An analysis without
    recorded inputs (written before they were recorded) counts as stale; one that matched no
    paper-003 labs (CT) records no treatment start and is not."""
    out = []
    for uid in dict.fromkeys([study_uid, *analyses.studies_paired_with(store, study_uid)]):
        latest = analyses.latest(store, uid)
        if latest is None:
            continue                      # never analysed: its first analysis reads the date
        inputs = latest["inputs"]
        if inputs is None:
            out.append(uid)
            continue
        if TREATMENT_START not in inputs:
            continue
        when, _ = effective_treatment_start(store, uid, inputs.get(BASELINE_STUDY))
        if (when.isoformat() if when else None) != inputs[TREATMENT_START]:
            out.append(uid)
    return out
