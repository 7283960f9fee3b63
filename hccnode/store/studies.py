"""Queries on the studies the node holds (the `studies`, `series` and `instances` tables of hccnode.store.db)."""

from __future__ import annotations

from hccnode.store.db import Store


def study_date_time(store: Store, study_uid: str) -> tuple[str | None, str | None] | None:
    """(Study Date, Study Time) as stored (DICOM DA / TM text), or None for a study the node does not hold."""
    rows = store.query("SELECT study_date, study_time FROM studies WHERE study_uid = ?", (study_uid,))
    return (rows[0]["study_date"], rows[0]["study_time"]) if rows else None


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


def patient_key(store: Store, study_uid: str) -> str | None:
    """The study's patient key, or None for a study the node does not hold (or one without a patient)."""
    rows = store.query("SELECT patient_key FROM studies WHERE study_uid = ?", (study_uid,))
    return rows[0]["patient_key"] if rows else None


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
