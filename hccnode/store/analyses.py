"""The analyses table: one row per analysis written (its SR and output folder), so a re-run finds
the SR it repeats or replaces. Kept apart from hccnode.pipeline so that every process that opens
the store creates it without importing the analysis libraries."""

from __future__ import annotations

import json

from hccnode.store.db import Store, now, schema

SCHEMA = schema(
    """
CREATE TABLE IF NOT EXISTS analyses (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    job_id INTEGER,
    sr_uid TEXT NOT NULL,          -- SOP Instance UID of the SR written
    out_dir TEXT NOT NULL,         -- relative to the data directory (absolute when outside it)
    outputs TEXT NOT NULL,         -- JSON list of SOP Instance UIDs (SEG, map, SR, summary)
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS analyses_study ON analyses(study_uid, id);
"""
)


def record(store: Store, study_uid: str, job_id: int | None, sr_uid: str, out_dir: str, outputs: list[str]) -> None:
    """Remember an analysis written: its SR, its output folder and the UIDs of its outputs."""
    with store.tx() as c:
        c.execute("INSERT INTO analyses (study_uid, job_id, sr_uid, out_dir, outputs, created_at) VALUES (?,?,?,?,?,?)",
                  (study_uid, job_id, sr_uid, out_dir, json.dumps(outputs), now()))


def of_study(store: Store, study_uid: str) -> list[dict]:
    """The study's analyses (sr_uid, out_dir, created_at, ...), oldest first."""
    return store.query("SELECT * FROM analyses WHERE study_uid = ? ORDER BY id", (study_uid,))


def study_of_sr(store: Store, sr_uid: str) -> str | None:
    """The study of an SR the node recorded writing, or None (also for a database without analyses)."""
    if not store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'analyses'"):
        return None
    rows = store.query("SELECT study_uid FROM analyses WHERE sr_uid = ? ORDER BY id DESC LIMIT 1", (sr_uid,))
    return rows[0]["study_uid"] if rows else None
