"""Lab results in the node's database: the `labs`, `labs_raw` and `lab_usage` tables.

Patient IDs are stored in clear in `labs` (matching to studies and `hccnode labs show` need
them) together with the keyed hash `patient_key`; logs carry only the hash.

Each result belongs to a "slot": patient + test + observation time. Within a slot at most one
row is `current`. A final or corrected result replaces the current one (which becomes
`superseded`), a preliminary one is stored as preliminary and is replaced by a later final,
a withdrawal (X/D/W) marks the current one `withdrawn`. Rows are never deleted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from hccnode.store import audit
from hccnode.store.db import Store, now, schema

SCHEMA = schema(
    """
CREATE TABLE IF NOT EXISTS labs_raw (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,          -- hl7 | csv
    origin TEXT,                   -- HL7: peer address:port; CSV: file name
    control_id TEXT,               -- MSH-10
    sending_facility TEXT,         -- MSH-4
    message_type TEXT,             -- MSH-9
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,         -- bytes received (raw may hold fewer when the frame was oversized)
    outcome TEXT NOT NULL,         -- AA | AE | AR | duplicate | incomplete | imported (CSV)
    reason TEXT,                   -- why it was not accepted; never contains patient identifiers
    raw BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS labs_raw_control ON labs_raw(sending_facility, control_id);
CREATE TABLE IF NOT EXISTS labs (
    id INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL,      -- shown by `labs show` only; never logged
    issuer TEXT,                   -- assigning authority (PID-3.4 namespace) or CSV issuer
    patient_key TEXT NOT NULL,     -- Store.patient_key(patient_id, issuer)
    test TEXT,                     -- catalog key (hct, crp, ...); NULL when the code is not in the catalog
    slot TEXT NOT NULL,            -- test, or coding system + code for unknown tests
    code TEXT NOT NULL,
    code_system TEXT,
    code_text TEXT,
    value REAL,                    -- in `unit`; NULL when censored, non-numeric or the test is unknown
    unit TEXT,                     -- canonical unit of `value`
    value_text TEXT,               -- OBX-5 / CSV value as received
    unit_text TEXT,                -- OBX-6 / CSV unit as received
    comparator TEXT,               -- <, <=, >, >= for a censored value ("<5")
    reference_range TEXT,          -- OBX-7
    abnormal_flag TEXT,            -- OBX-8
    status TEXT NOT NULL,          -- OBX-11 as received (CSV: status column, default F)
    kind TEXT NOT NULL,            -- final | preliminary | withdraw | other (from the status, see labs.toml [hl7])
    state TEXT NOT NULL,           -- current | superseded | withdrawn | withdrawal | ignored
    observed TEXT NOT NULL,        -- observation time as received (OBX-14 / OBR-7 / CSV time)
    observed_start REAL NOT NULL,  -- epoch seconds, start of the period the time names
    observed_end REAL NOT NULL,    -- epoch seconds, end of that period (start + 1 s for a full time)
    source TEXT NOT NULL,          -- hl7 | csv
    raw_id INTEGER REFERENCES labs_raw(id),
    control_id TEXT,
    sending_facility TEXT,
    source_ref TEXT,               -- OBX set ID, or CSV row number
    received_at REAL NOT NULL,
    replaced_by INTEGER,           -- the row that superseded or withdrew this one
    note TEXT
);
CREATE INDEX IF NOT EXISTS labs_patient ON labs(patient_id, test, observed_start);
CREATE INDEX IF NOT EXISTS labs_slot ON labs(patient_key, slot, observed_start);
CREATE TABLE IF NOT EXISTS lab_usage (
    study_uid TEXT NOT NULL,
    paper TEXT NOT NULL,           -- "000", "001", ...
    test TEXT NOT NULL,
    panel TEXT NOT NULL DEFAULT '',-- comma-joined tests when matched as one draw (match_panel), else ''
    scan_time REAL NOT NULL,       -- epoch seconds the match was made against
    status TEXT NOT NULL,          -- matched | censored | missing
    lab_id INTEGER,                -- labs.id used (NULL when missing)
    recorded_at REAL NOT NULL,
    PRIMARY KEY (study_uid, paper, test, panel)
);
"""
)

FINAL, PRELIMINARY, WITHDRAW = "final", "preliminary", "withdraw"


@dataclass
class Result:
    """One observation ready to store (times already parsed, value normalised)."""

    patient_id: str
    issuer: str | None
    test: str | None
    code: str
    code_system: str
    code_text: str
    value: float | None
    unit: str | None
    value_text: str
    unit_text: str
    comparator: str | None
    status: str
    kind: str  # final | preliminary | withdraw | other
    observed: str
    observed_start: datetime
    observed_end: datetime
    reference_range: str = ""
    abnormal_flag: str = ""
    source_ref: str = ""

    @property
    def slot(self) -> str:
        return self.test or f"{self.code_system}:{self.code}"


@dataclass(frozen=True)
class Change:
    """A slot whose usable value changed: feed it to `requeue.studies_needing_requeue`."""

    patient_key: str
    patient_id: str
    issuer: str | None
    test: str
    observed_start: float
    action: str  # stored | replaced | withdrawn


@dataclass
class Stored:
    raw_id: int | None
    rows: int = 0
    changes: list[Change] = field(default_factory=list)


def save_raw(store: Store, raw: bytes, *, source: str, outcome: str, reason: str = "", origin: str = "",
             control_id: str = "", facility: str = "", message_type: str = "", size: int | None = None) -> int:
    """Keep a message or file as received; returns its id. Call inside a transaction or alone."""
    cur = store.conn().execute(
        "INSERT INTO labs_raw (received_at, source, origin, control_id, sending_facility, message_type,"
        " sha256, size, outcome, reason, raw) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (now(), source, origin, control_id, facility, message_type, hashlib.sha256(raw).hexdigest(),
         len(raw) if size is None else size, outcome, reason, raw),
    )
    return int(cur.lastrowid)


def find_duplicate(store: Store, facility: str, control_id: str, raw: bytes) -> int | None:
    """The id of an already accepted, byte-identical message with this control ID (a resend)."""
    if not control_id:
        return None
    digest = hashlib.sha256(raw).hexdigest()
    row = store.conn().execute(
        "SELECT id FROM labs_raw WHERE sending_facility IS ? AND control_id = ? AND sha256 = ? AND outcome = 'AA'"
        " LIMIT 1", (facility, control_id, digest)).fetchone()
    return row[0] if row else None


def store_results(store: Store, results: list[Result], *, source: str, raw_id: int | None,
                  control_id: str = "", facility: str = "") -> Stored:
    """Apply `results` in order; the caller holds the transaction (one per message or file)."""
    c = store.conn()
    out = Stored(raw_id)
    received = now()
    for r in results:
        key = store.patient_key(r.patient_id, r.issuer)
        start, end = r.observed_start.timestamp(), r.observed_end.timestamp()
        cur = c.execute(
            "SELECT id, status, kind, value_text, unit_text FROM labs WHERE patient_key = ? AND slot = ?"
            " AND observed_start = ? AND state = 'current'", (key, r.slot, start)).fetchone()
        state, note = "current", None
        action = "stored"
        if r.kind == WITHDRAW:
            state = "withdrawal"
            note = "withdraws the current result" if cur else "nothing to withdraw"
            action = "withdrawn"
        elif r.kind not in (FINAL, PRELIMINARY):
            state, note = "ignored", f"result status {r.status!r} carries no usable result"
        elif cur and r.kind == PRELIMINARY and cur["kind"] == FINAL:
            state, note = "ignored", "preliminary result after a final one"
        elif cur and (cur["status"], cur["value_text"], cur["unit_text"]) == (r.status, r.value_text, r.unit_text):
            continue  # the same result again (e.g. a resent panel)
        elif cur:
            action = "replaced"
        row = c.execute(
            "INSERT INTO labs (patient_id, issuer, patient_key, test, slot, code, code_system, code_text, value, unit,"
            " value_text, unit_text, comparator, reference_range, abnormal_flag, status, kind, state,"
            " observed, observed_start, observed_end, source, raw_id, control_id, sending_facility, source_ref, received_at, note)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (r.patient_id, r.issuer, key, r.test, r.slot, r.code, r.code_system, r.code_text, r.value, r.unit,
             r.value_text, r.unit_text, r.comparator, r.reference_range, r.abnormal_flag, r.status, r.kind, state,
             r.observed, start, end, source, raw_id, control_id, facility, r.source_ref, received, note),
        ).lastrowid
        out.rows += 1
        audit.append(c, "lab.received", f"{source}:{facility or '-'}", patient_key=key, lab=row, test=r.test,
                     code=r.code, status=r.status, state=state, action=action, observed_start=start,
                     control_id=control_id or None, raw_id=raw_id)
        if state == "ignored" or (r.kind == WITHDRAW and not cur):
            continue
        if cur:
            c.execute("UPDATE labs SET state = ?, replaced_by = ? WHERE id = ?",
                      ("withdrawn" if r.kind == WITHDRAW else "superseded", row, cur["id"]))
        if r.test:
            out.changes.append(Change(key, r.patient_id, r.issuer, r.test, start, action))
    return out


def results_for(store: Store, patient_id: str, test: str | None = None) -> list[dict]:
    """Every stored row of a patient (all issuers), oldest observation first."""
    sql = "SELECT * FROM labs WHERE patient_id = ?"
    params: list = [patient_id]
    if test:
        sql += " AND test = ?"
        params.append(test)
    return store.query(sql + " ORDER BY observed_start, id", tuple(params))


def set_raw_outcome(store: Store, raw_id: int, outcome: str, reason: str) -> None:
    """Record what became of a kept message (e.g. when it is reprocessed). Inside a transaction or alone."""
    store.conn().execute("UPDATE labs_raw SET outcome = ?, reason = ? WHERE id = ?", (outcome, reason, raw_id))


def raw_messages(store: Store, source: str, outcome: str, ids: list[int] | None = None) -> list[dict]:
    """Kept messages of `source` with `outcome` (id, raw, origin), optionally only `ids`, oldest first."""
    sql = "SELECT id, raw, origin FROM labs_raw WHERE source = ? AND outcome = ?"
    params: list = [source, outcome]
    if ids:
        sql += f" AND id IN ({','.join('?' * len(ids))})"
        params += ids
    return store.query(sql + " ORDER BY id", tuple(params))


def current_results(store: Store, patient_id: str, issuer: str | None, test: str) -> list[dict]:
    """The current rows of `test` for a patient: of this issuer, or all when the row or the issuer has none."""
    return store.query(
        "SELECT * FROM labs WHERE patient_id = ? AND test = ? AND state = 'current'"
        " AND (issuer IS NULL OR ? IS NULL OR issuer = ?)", (patient_id, test, issuer, issuer))


def provenance(store: Store, lab_id: int) -> dict:
    """Where a result came from: observed_start, source, control_id, source_ref and its message's origin and type."""
    return store.query(
        "SELECT l.observed_start, l.source, l.control_id, l.source_ref, r.origin, r.message_type"
        " FROM labs l LEFT JOIN labs_raw r ON r.id = l.raw_id WHERE l.id = ?", (lab_id,))[0]


def issuers_of(store: Store, patient_id: str) -> list[str | None]:
    """Every issuer seen with this patient ID in the labs table."""
    return [r["issuer"] for r in store.query("SELECT DISTINCT issuer FROM labs WHERE patient_id = ?", (patient_id,))]


def record_usage(store: Store, study_uid: str, paper: str, panel: str, scan_time: float,
                 used: list[tuple[str, str, int | None]]) -> None:
    """Remember the lab rows an analysis used: one (test, status, lab id) per test of one paper (and panel)."""
    with store.tx() as c:
        for test, status, lab_id in used:
            c.execute(
                "INSERT OR REPLACE INTO lab_usage (study_uid, paper, test, panel, scan_time, status, lab_id, recorded_at)"
                " VALUES (?,?,?,?,?,?,?,?)", (study_uid, paper, test, panel, scan_time, status, lab_id, now()))


def usage_of_patients(store: Store, patient_keys: list[str]) -> list[dict]:
    """The recorded lab usage of every study of these patients (study_uid, patient_key, paper, test, panel,
    scan_time, status, lab_id), by study."""
    marks = ",".join("?" * len(patient_keys))
    return store.query(
        f"SELECT s.study_uid, s.patient_key, u.paper, u.test, u.panel, u.scan_time, u.status, u.lab_id"
        f" FROM studies s JOIN lab_usage u ON u.study_uid = s.study_uid WHERE s.patient_key IN ({marks})"
        " ORDER BY s.study_uid", tuple(patient_keys))


def last_message(store: Store, source: str, outcomes: tuple[str, ...] | None = None) -> dict | None:
    """The newest kept message of `source` (with one of `outcomes` when given): its received_at, outcome,
    reason, sending_facility, message_type and control_id; never its bytes."""
    sql = ("SELECT received_at, outcome, reason, sending_facility, message_type, control_id FROM labs_raw"
           " WHERE source = ?")
    params: tuple = (source,)
    if outcomes:
        sql += f" AND outcome IN ({','.join('?' * len(outcomes))})"
        params += tuple(outcomes)
    rows = store.query(sql + " ORDER BY id DESC LIMIT 1", params)
    return rows[0] if rows else None


def last_received(store: Store, source: str) -> float | None:
    """When the newest message or file of `source` arrived (epoch seconds), or None."""
    return store.conn().execute("SELECT MAX(received_at) FROM labs_raw WHERE source = ?", (source,)).fetchone()[0]


def outcome_counts(store: Store, source: str, since: float) -> dict[str, int]:
    """Messages of `source` per outcome received since `since` (epoch seconds)."""
    return {r["outcome"]: r["n"] for r in store.query(
        "SELECT outcome, COUNT(*) AS n FROM labs_raw WHERE source = ? AND received_at >= ? GROUP BY outcome",
        (source, since))}


def result_count(store: Store) -> int:
    return store.conn().execute("SELECT COUNT(*) FROM labs").fetchone()[0]
