"""The `phases` table: one row per series of a study with its kind, confidence and reasons
(decided by hccnode.imaging.phases)."""

from __future__ import annotations

import json
import time
from typing import Any

from hccnode.store.db import Store, schema

PHASES_SQL = schema(
    """
CREATE TABLE IF NOT EXISTS phases (
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    series_number INTEGER,
    series_description TEXT,
    kind TEXT NOT NULL,             -- ct_arterial, dect_iodine, mr_dwi, other, ambiguous ...
    confidence REAL NOT NULL,       -- 0..1
    phase TEXT,                     -- contrast phase of CT / DECT series
    phase_confidence REAL,
    kev REAL,                       -- VMI energy
    b_values TEXT,                  -- JSON list, s/mm2
    reasons TEXT NOT NULL,          -- JSON list: rules fired, values that made them fire
    measurement TEXT,               -- JSON: aorta / liver HU used for image confirmation
    decided_at REAL NOT NULL,
    rules_version TEXT NOT NULL,
    rules_sha256 TEXT NOT NULL,
    PRIMARY KEY (study_uid, series_uid)
);
"""
)


def save_decisions(store: Store, study_uid: str, decisions: list, rules) -> None:
    """Replace the study's rows with `decisions` (hccnode.imaging.phases.Decision, one transaction);
    `rules` (hccnode.imaging.phase_rules.RuleSet) gives the rules' version and SHA-256."""
    now = time.time()
    with store.tx() as c:
        c.execute("DELETE FROM phases WHERE study_uid = ?", (study_uid,))
        for d in decisions:
            row = d.as_dict()
            c.execute(
                "INSERT INTO phases (study_uid, series_uid, series_number, series_description, kind, confidence, phase,"
                " phase_confidence, kev, b_values, reasons, measurement, decided_at, rules_version, rules_sha256)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (study_uid, d.series_uid, d.series_number, d.series_description, d.kind, row["confidence"], d.phase,
                 row["phase_confidence"], d.kev, json.dumps(row["b_values"]), json.dumps(d.reasons, ensure_ascii=False),
                 json.dumps(row["measurement"]) if "measurement" in row else None, now, rules.version, rules.sha256))


def stored_phases(store: Store, study_uid: str) -> list[dict[str, Any]]:
    """The stored decisions of a study (reasons and b-values decoded), by series number."""
    rows = store.query("SELECT * FROM phases WHERE study_uid = ? ORDER BY series_number, series_uid", (study_uid,))
    for r in rows:
        r["reasons"] = json.loads(r["reasons"])
        r["b_values"] = json.loads(r["b_values"] or "[]")
        r["measurement"] = json.loads(r["measurement"]) if r["measurement"] else None
    return rows
