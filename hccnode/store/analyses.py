"""The analyses table: one row per analysis written (its SR and output folder), so a re-run finds
the SR it repeats or replaces. Kept apart from hccnode.pipeline so that every process that opens
the store creates it without importing the analysis libraries."""

from hccnode.store.db import schema

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
