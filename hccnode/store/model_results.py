"""Stored model outputs: one row per evaluation of a card on a study.

The analysis pipeline writes here (`record`); validation reads the latest row per study and
card version (`latest_results`). Output and inputs are the engine's JSON, so every stored
number keeps its card id + version and the provenance of each input.
"""

from __future__ import annotations

import json
import time
from typing import Any

from hccnode.store.db import Store, schema

SCHEMA = schema(
    """
CREATE TABLE IF NOT EXISTS model_results (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL,
    card_id TEXT NOT NULL,
    card_version TEXT NOT NULL,
    status TEXT NOT NULL,          -- evaluated | not_evaluated
    output TEXT NOT NULL,          -- JSON: outputs, withheld, reasons, limitations
    inputs TEXT NOT NULL,          -- JSON: name -> value, unit, source
    evaluated_at REAL NOT NULL     -- unix time
);
CREATE INDEX IF NOT EXISTS model_results_study ON model_results(study_uid, card_id, card_version);
"""
)


def ensure(store: Store) -> None:
    """Create the table on a store opened before this module was imported."""
    store.conn().executescript(SCHEMA)


def record(store: Store, study_uid: str, result: dict[str, Any], evaluated_at: float | None = None) -> int:
    """Store one engine result for `study_uid`; returns the row id."""
    ensure(store)
    output = {k: result.get(k) for k in ("status", "outputs", "withheld", "reasons", "limitations", "title", "paper")}
    with store.tx() as c:
        cur = c.execute(
            "INSERT INTO model_results (study_uid, card_id, card_version, status, output, inputs, evaluated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (study_uid, result["card_id"], result["card_version"], result["status"],
             json.dumps(output, sort_keys=True), json.dumps(result.get("inputs_used", {}), sort_keys=True),
             time.time() if evaluated_at is None else evaluated_at),
        )
        return int(cur.lastrowid)


def latest_results(store: Store, card_id: str | None = None) -> list[dict[str, Any]]:
    """The most recent evaluated result per (study, card, version), decoded."""
    ensure(store)
    sql = """
        SELECT r.* FROM model_results r
        JOIN (SELECT study_uid, card_id, card_version, MAX(id) AS id FROM model_results
              WHERE status = 'evaluated' GROUP BY study_uid, card_id, card_version) last ON last.id = r.id
    """
    params: tuple = ()
    if card_id:
        sql += " WHERE r.card_id = ?"
        params = (card_id,)
    rows = store.query(sql + " ORDER BY r.id", params)
    for r in rows:
        r["output"] = json.loads(r["output"])
        r["inputs"] = json.loads(r["inputs"])
    return rows
