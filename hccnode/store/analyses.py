"""The analyses table: one row per analysis written (its SR and output folder), so a re-run finds
the SR it repeats or replaces. Kept apart from hccnode.pipeline so that every process that opens
the store creates it without importing the analysis libraries."""

from __future__ import annotations

import json
from pathlib import Path

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


def record(store: Store, study_uid: str, job_id: int | None, sr_uid: str, out_dir: Path, outputs: list[str]) -> None:
    """Record an analysis whose files are all written: its SR, its output folder (kept relative to the
    data directory when inside it) and the UIDs of its outputs."""
    where = out_dir.relative_to(store.data_dir) if out_dir.is_relative_to(store.data_dir) else out_dir
    with store.tx() as c:
        c.execute("INSERT INTO analyses (study_uid, job_id, sr_uid, out_dir, outputs, created_at) VALUES (?,?,?,?,?,?)",
                  (study_uid, job_id, sr_uid, str(where), json.dumps(outputs), now()))


def of_study(store: Store, study_uid: str) -> list[dict]:
    """The study's analyses, oldest first: id, sr_uid, out_dir, created_at."""
    return store.query("SELECT id, sr_uid, out_dir, created_at FROM analyses WHERE study_uid = ? ORDER BY id",
                       (study_uid,))


def study_of_sr(store: Store, sr_uid: str) -> str | None:
    """The study of an SR the node recorded writing, or None (also for a database without analyses)."""
    if not store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'analyses'"):
        return None
    rows = store.query("SELECT study_uid FROM analyses WHERE sr_uid = ? ORDER BY id DESC LIMIT 1", (sr_uid,))
    return rows[0]["study_uid"] if rows else None
