"""The analyses table: one row per analysis written (its SR and output folder), so a re-run finds
the SR it repeats or replaces, and `audit reverify` the inputs it was made with. Kept apart from
hccnode.pipeline so that every process that opens the store creates it without importing the
analysis libraries.

`inputs` records what an analysis used that is not in the store's own rows at a later time: paper
003's treatment start and the study it was set on, and the baseline study a follow-up was paired
with (hccnode.store.studies). NULL for analyses written before inputs were recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

from hccnode.store.db import Store, added_column, now, schema

SCHEMA = schema(
    """
CREATE TABLE IF NOT EXISTS analyses (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    job_id INTEGER,
    sr_uid TEXT NOT NULL,          -- SOP Instance UID of the SR written
    out_dir TEXT NOT NULL,         -- relative to the data directory (absolute when outside it)
    outputs TEXT NOT NULL,         -- JSON list of SOP Instance UIDs (SEG, map, SR, summary)
    created_at REAL NOT NULL,
    inputs TEXT                    -- JSON object: inputs from outside the store's rows (see module docstring)
);
CREATE INDEX IF NOT EXISTS analyses_study ON analyses(study_uid, id);
"""
)
added_column("analyses", "inputs", "TEXT")


def record(store: Store, study_uid: str, job_id: int | None, sr_uid: str, out_dir: Path,
           outputs: list[str], inputs: dict) -> None:
    """Record an analysis whose files are all written (`out_dir` relative to the data directory
    when inside it)."""
    where = out_dir.relative_to(store.data_dir) if out_dir.is_relative_to(store.data_dir) else out_dir
    with store.tx() as c:
        c.execute("INSERT INTO analyses (study_uid, job_id, sr_uid, out_dir, outputs, created_at, inputs)"
                  " VALUES (?,?,?,?,?,?,?)",
                  (study_uid, job_id, sr_uid, str(where), json.dumps(outputs), now(), json.dumps(inputs, sort_keys=True)))


def _row(r: dict) -> dict:
    r["inputs"] = json.loads(r["inputs"]) if r.get("inputs") else None
    return r


def of_study(store: Store, study_uid: str) -> list[dict]:
    """The study's analyses, oldest first: id, sr_uid, out_dir, created_at, inputs (dict or None)."""
    return [_row(r) for r in store.query(
        "SELECT id, sr_uid, out_dir, created_at, inputs FROM analyses WHERE study_uid = ? ORDER BY id", (study_uid,))]


def latest(store: Store, study_uid: str) -> dict | None:
    rows = of_study(store, study_uid)
    return rows[-1] if rows else None


def inputs_of(store: Store, sr_uid: str) -> dict | None:
    """The inputs recorded with the latest analysis that wrote the SR `sr_uid` (None: not recorded)."""
    rows = store.query("SELECT inputs FROM analyses WHERE sr_uid = ? ORDER BY id DESC LIMIT 1", (sr_uid,))
    return _row(rows[0])["inputs"] if rows else None


def studies_paired_with(store: Store, baseline_uid: str) -> list[str]:
    """Studies whose latest analysis paired them with `baseline_uid` as their paper-003 baseline."""
    rows = store.query(
        "SELECT a.study_uid FROM analyses a WHERE a.id = (SELECT MAX(b.id) FROM analyses b WHERE b.study_uid = a.study_uid)"
        " AND json_extract(a.inputs, '$.baseline_study') = ?", (baseline_uid,))
    return [r["study_uid"] for r in rows]


def study_of_sr(store: Store, sr_uid: str) -> str | None:
    """The study of an SR the node recorded writing, or None (also for a database without analyses)."""
    if not store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'analyses'"):
        return None
    rows = store.query("SELECT study_uid FROM analyses WHERE sr_uid = ? ORDER BY id DESC LIMIT 1", (sr_uid,))
    return rows[0]["study_uid"] if rows else None


def folders_of_sr(store: Store, sr_uid: str) -> list[Path]:
    """The output folders of the analyses that wrote the SR `sr_uid`, newest first."""
    rows = store.query("SELECT out_dir FROM analyses WHERE sr_uid = ? ORDER BY id DESC", (sr_uid,))
    return [store.data_dir / r["out_dir"] for r in rows]
