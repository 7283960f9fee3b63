"""The audit log: what the node did with every study, append-only and hash-chained.

One row per event (association, instance, job, phase decision, ROI source, lab, model,
output, send, configuration). A row holds no patient name, ID or birth date: patients
appear only as `Store.patient_key` hashes, and field names that usually carry PHI are
refused, as `hccnode.log.event` does.

Integrity, in two layers:
- SQLite triggers refuse UPDATE and DELETE on the table, so an ordinary slip (a stray
  statement, a tool that "tidies up") fails instead of editing the record;
- each row stores `prev_hash` (the previous row's `row_hash`) and its own `row_hash` =
  SHA-256 of the canonical JSON (sorted keys, compact) of all its other columns, id and
  prev_hash included. `verify()` recomputes the chain and names the first row that was
  edited, removed or moved, even if someone dropped the triggers to do it.
The chain alone cannot show that rows were cut off the end: keep heads (`head()`, printed
by `hccnode audit verify`, logged at start-up) elsewhere and pass one to `verify(expect=...)`.

Ids are consecutive from 1: a row is appended as last id + 1 with the last hash, read and
written under the database write lock (BEGIN IMMEDIATE), so concurrent writers, threads or
processes sharing the file, extend one chain.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from hccnode import __version__, log
from hccnode.store.db import Store, schema

TABLE_SQL = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,        -- 1, 2, 3 ... without gaps
    time TEXT NOT NULL,            -- UTC, ISO 8601 with milliseconds: 2024-01-05T08:00:00.123Z
    actor TEXT NOT NULL,           -- who acted: "AE:CT01", "user:alice", or a component ("worker")
    event TEXT NOT NULL,           -- one of audit.EVENTS
    study_uid TEXT,
    patient_key TEXT,              -- Store.patient_key hash, never the patient ID
    input_hashes TEXT NOT NULL,    -- JSON: SHA-256 of the inputs (list, or {name: hash})
    output_uids TEXT NOT NULL,     -- JSON list of SOP Instance UIDs created or sent
    software_version TEXT NOT NULL,
    card_versions TEXT NOT NULL,   -- JSON list of model cards "id@version" used
    details TEXT NOT NULL,         -- JSON object
    prev_hash TEXT NOT NULL,       -- row_hash of row id - 1 (GENESIS for row 1)
    row_hash TEXT NOT NULL         -- SHA-256 of canonical JSON of all the columns above
);
CREATE INDEX IF NOT EXISTS audit_study ON audit(study_uid);
-- Partial: only config rows are indexed, so instance events pay for one index, not two.
CREATE INDEX IF NOT EXISTS audit_config ON audit(id) WHERE event = 'config.loaded';
"""

TRIGGERS_SQL = """
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused'); END;
"""

schema(TABLE_SQL + TRIGGERS_SQL)

COLUMNS = ("id", "time", "actor", "event", "study_uid", "patient_key", "input_hashes", "output_uids",
           "software_version", "card_versions", "details", "prev_hash", "row_hash")
GENESIS = "0" * 64

# The vocabulary: an unknown name is refused, so a typo fails in tests, not in an audit.
EVENTS = {
    "node.started": "the node started (version, data directory)",
    "node.stopped": "the node stopped cleanly",
    "config.loaded": "configuration in effect at start-up: hash and values (no secrets)",
    "config.changed": "configuration differs from the last one recorded: which keys changed",
    "association.accepted": "a DICOM association was accepted",
    "association.rejected": "a DICOM association was rejected, with the reason",
    "instance.stored": "an instance was kept in the spool and indexed",
    "instance.replaced": "an instance with a known SOP Instance UID but new content replaced the old one",
    "instance.duplicate": "an instance identical to a stored one was received again",
    "instance.quarantined": "an instance was refused and its bytes kept in quarantine",
    "instance.rejected": "an instance was refused and not kept (e.g. disk full)",
    "job.queued": "an analysis job was queued",
    "job.started": "a worker took a job",
    "job.done": "a job finished",
    "job.failed": "a job attempt failed (to be retried, or for good)",
    "job.not_applicable": "a job ended at once: its study is not one the analysis applies to, with the reason",
    "study.treatment_start": "the date treatment started was set or cleared for a study (paper 003's lab anchor)",
    "analysis.not_applicable": "a study holds no CT or MR image series readable as a volume: what it holds instead",
    "phase.decided": "a series was assigned a contrast phase, with the reasons",
    "roi.source": "where an ROI came from (reader's SEG / RTSTRUCT / SR, or automatic)",
    "hl7.refused": "an HL7 (MLLP) connection was closed unread: host not allowed, or too many connections",
    "lab.received": "a lab result was received (HL7 or CSV)",
    "lab.matched": "a lab value was matched to a scan for a model",
    "model.evaluated": "a model card was evaluated",
    "analysis.reverified": "an SR's analysis was recomputed from the stored inputs (audit reverify): SR UID, verdict",
    "output.created": "an output object (SR, parametric map, SEG) was created",
    "output.queued": "an output was queued for a destination",
    "output.sent": "an output was accepted by a destination",
    "output.send_failed": "sending an output failed (to be retried, or for good)",
    "prior.queried": "the PACS was asked (C-FIND) for a follow-up's baseline: every candidate, the choice and why",
    "prior.retrieved": "a baseline study was retrieved from the PACS (C-MOVE or C-GET) into the store",
    "prior.failed": "querying or retrieving a baseline failed, with the reason",
}

# Field names (case, '_' and '-' ignored) that carry patient names, IDs or birth dates.
_PHI_NAMES = frozenset(re.sub(r"[^a-z0-9]", "", n.lower()) for n in log.PHI_FIELDS) | {
    "patientsname", "patientsbirthdate", "birthdate", "dateofbirth", "dob",
    "otherpatientids", "otherpatientnames", "otherpatientidssequence", "patientbirthname",
    "patientmothersbirthname", "patientmotherbirthname", "mrn", "medicalrecordnumber",
}
_PATIENT_KEY_RE = re.compile(r"^[0-9a-f]{16,64}$")


class AuditError(ValueError):
    """An audit record that must not be written (PHI field, unknown event, bad value)."""


def utc_now() -> str:
    """Current time, UTC, ISO 8601 with milliseconds and 'Z'."""
    return format_time(datetime.now(timezone.utc))


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"  # drop "+00:00"


def parse_since(text: str) -> str:
    """An ISO 8601 date or date-time (UTC unless it has an offset) in the log's time format."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise AuditError(f"{text!r} is not an ISO 8601 date or date-time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return format_time(t)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _canonical(value: Any) -> str:
    return _ENCODER.encode(value)


def row_hash(row: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of every column except row_hash."""
    body = {k: row[k] for k in COLUMNS if k != "row_hash"}
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def digest(hashes: Iterable[str]) -> str:
    """One SHA-256 standing for a set of input hashes (e.g. every instance of a study), order-free."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


@functools.lru_cache(maxsize=4096)
def _is_phi_name(name: str) -> bool:
    return re.sub(r"[^a-z0-9]", "", name.lower()) in _PHI_NAMES


def _check_phi(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if _is_phi_name(str(k)):
                raise AuditError(f"refusing PHI field {where}.{k} in the audit log")
            if isinstance(v, (Mapping, list, tuple)):
                _check_phi(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, (Mapping, list, tuple)):
                _check_phi(v, f"{where}[{i}]")


def _json(value: Any, field: str) -> str:
    if not value:
        return "{}" if isinstance(value, Mapping) else "[]"
    try:
        return _canonical(value)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit field {field} is not JSON: {exc}") from None


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to a database holding an audit table (the node's, or an export);
    LookupError when it has none."""
    c = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    if not c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone():
        c.close()
        raise LookupError(f"{path} has no audit table")
    return c


def _conn(target: Store | sqlite3.Connection) -> sqlite3.Connection:
    return target.conn() if isinstance(target, Store) else target


def append(target: Store | sqlite3.Connection, event: str, actor: str, *, study_uid: str | None = None,
           patient_key: str | None = None, input_hashes: Iterable[str] | Mapping[str, str] = (),
           output_uids: Iterable[str] = (), card_versions: Iterable[str] = (),
           details: Mapping[str, Any] | None = None, **more_details: Any) -> int:
    """Append one event; returns its id.

    `target` is a Store or a connection. Inside the caller's write transaction (`with store.tx()
    as c: append(c or store, ...)`) the row joins it, so the event commits or rolls back with what
    it records; outside one, the row is written in a short transaction of its own. Extra keyword
    arguments go into `details`.
    """
    if event not in EVENTS:
        raise AuditError(f"unknown audit event {event!r} (known: {', '.join(EVENTS)})")
    if not actor or not isinstance(actor, str):
        raise AuditError("audit actor must be a non-empty string")
    if patient_key is not None and not _PATIENT_KEY_RE.match(patient_key):
        raise AuditError("audit patient_key must be a Store.patient_key hash")
    details = {**(details or {}), **more_details}
    _check_phi(details, "details")
    if not isinstance(input_hashes, Mapping):
        input_hashes = list(input_hashes)
    _check_phi(input_hashes, "input_hashes")
    row = {
        "actor": actor, "event": event, "study_uid": study_uid, "patient_key": patient_key,
        "input_hashes": _json(input_hashes, "input_hashes"),
        "output_uids": _json([str(u) for u in output_uids], "output_uids"),
        "software_version": __version__,
        "card_versions": _json(sorted(str(c) for c in card_versions), "card_versions"),
        "details": _json(details, "details"),
    }
    c = _conn(target)
    if c.in_transaction:
        return _insert(c, row)
    c.execute("BEGIN IMMEDIATE")
    try:
        row_id = _insert(c, row)
    except BaseException:
        c.execute("ROLLBACK")
        raise
    c.execute("COMMIT")
    return row_id


def _insert(c: sqlite3.Connection, row: dict) -> int:
    """Chain `row` onto the last one. The caller holds the write lock, so nobody appends in between;
    if it does not (a deferred transaction), the id's PRIMARY KEY makes a racing insert fail, not fork."""
    last = c.execute("SELECT id, row_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    row["id"] = last[0] + 1 if last else 1
    row["prev_hash"] = last[1] if last else GENESIS
    row["time"] = utc_now()  # taken under the lock: times follow ids
    row["row_hash"] = row_hash(row)
    c.execute(f"INSERT INTO audit ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
              tuple(row[k] for k in COLUMNS))
    return row["id"]


# -- verification ------------------------------------------------------------------------

@dataclass
class Verdict:
    ok: bool
    rows: int                      # rows checked (up to and including the first bad one)
    bad_id: int | None = None      # first bad row
    problem: str = ""              # "hash mismatch" | "broken link" | "gap in ids"
    detail: str = ""
    head_id: int | None = None     # last good row
    head_hash: str | None = None
    guarded: bool = True           # both UPDATE/DELETE triggers present

    def __str__(self) -> str:
        guard = "" if self.guarded else "\nwarning: the UPDATE/DELETE triggers are missing (re-created when the node opens the database)"
        if self.ok:
            if not self.rows:
                return "audit log empty" + guard
            return f"audit log intact: {self.rows} rows; head {self.head_id}:{self.head_hash}" + guard
        return f"audit log NOT intact: row {self.bad_id}: {self.problem}: {self.detail}" + guard


def verify(target: Store | sqlite3.Connection, expect: tuple[int, str] | None = None) -> Verdict:
    """Walk the chain from row 1; stop at the first row that was edited, removed or moved.

    Checks, in order, for each row: its id follows the previous one (a gap: rows deleted),
    its row_hash matches its content (hash mismatch: edited, or moved to another id), and its
    prev_hash is the previous row's row_hash (broken link: the previous row was replaced by
    one with a recomputed hash, or rows were inserted). `expect`, a head (id, row_hash)
    recorded earlier, must still be in the chain: this is what shows rows cut off the end.
    """
    c = _conn(target)
    triggers = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'")}
    guarded = {"audit_no_update", "audit_no_delete"} <= triggers
    prev_id, prev_hash, n = 0, GENESIS, 0

    def verdict(bad_id: int | None = None, problem: str = "", detail: str = "") -> Verdict:
        return Verdict(bad_id is None, n, bad_id, problem, detail, prev_id or None,
                       prev_hash if prev_id else None, guarded)

    cur = c.execute(f"SELECT {', '.join(COLUMNS)} FROM audit ORDER BY id")
    try:
        for r in cur:
            row = dict(zip(COLUMNS, r))
            n += 1
            if row["id"] != prev_id + 1:
                return verdict(row["id"], "gap in ids",
                               f"expected id {prev_id + 1} after {prev_id or 'the start'}, found {row['id']}")
            if row_hash(row) != row["row_hash"]:
                return verdict(row["id"], "hash mismatch", "the row's content does not match its row_hash (edited or moved)")
            if row["prev_hash"] != prev_hash:
                return verdict(row["id"], "broken link", f"prev_hash is not the row_hash of row {prev_id}" if prev_id
                               else "the first row's prev_hash is not the genesis value")
            if expect and row["id"] == expect[0] and row["row_hash"] != expect[1]:
                return verdict(row["id"], "head mismatch", "its row_hash is not the one recorded")
            prev_id, prev_hash = row["id"], row["row_hash"]
    finally:
        cur.close()
    if expect and expect[0] > prev_id:
        return verdict(expect[0], "truncated", f"the log ends at row {prev_id}; the recorded head is row {expect[0]}")
    return verdict()


def head(target: Store | sqlite3.Connection) -> tuple[int, str] | None:
    """(id, row_hash) of the last row, or None for an empty log. Cheap: log it at start-up, so
    the node's log file keeps copies that show if rows were later cut off the end."""
    r = _conn(target).execute("SELECT id, row_hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    return (r[0], r[1]) if r else None


# -- reading -------------------------------------------------------------------------------

def rows(target: Store | sqlite3.Connection, study_uid: str | None = None, since: str | None = None) -> Iterator[dict]:
    """Rows in chain order, optionally one study's and/or from `since` (log time format) on."""
    c = _conn(target)
    sql, where, params = f"SELECT {', '.join(COLUMNS)} FROM audit", [], []
    if study_uid is not None:
        where.append("study_uid = ?")
        params.append(study_uid)
    if since is not None:
        where.append("time >= ?")
        params.append(since)
    if where:
        sql += " WHERE " + " AND ".join(where)
    for r in c.execute(sql + " ORDER BY id", params):
        yield dict(zip(COLUMNS, r))


def write_csv(target: Store | sqlite3.Connection, out: IO[str], since: str | None = None) -> int:
    """Every column of every row (from `since` on) as CSV with a header; returns the row count."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    n = 0
    for row in rows(target, since=since):
        w.writerow(["" if row[k] is None else row[k] for k in COLUMNS])
        n += 1
    return n


def copy_to(target: Store | sqlite3.Connection, path: str | Path, since: str | None = None) -> int:
    """Write the audit table alone (with its triggers) to a new SQLite file, e.g. to browse with
    Datasette without exposing the node's other tables (the labs table holds patient IDs)."""
    p = Path(path)
    if p.exists():
        raise FileExistsError(f"{p}: already exists")
    part = p.with_name(p.name + ".part")  # renamed when complete: no half-written copy under FILE
    part.unlink(missing_ok=True)
    out = sqlite3.connect(part, isolation_level=None)
    try:
        out.executescript(TABLE_SQL + TRIGGERS_SQL)
        out.execute("BEGIN")
        n = 0
        for row in rows(target, since=since):
            out.execute(f"INSERT INTO audit VALUES ({', '.join('?' * len(COLUMNS))})", tuple(row[k] for k in COLUMNS))
            n += 1
        out.execute("COMMIT")
    except BaseException:
        out.close()
        part.unlink(missing_ok=True)
        raise
    out.close()
    part.rename(p)
    return n


# -- configuration ----------------------------------------------------------------------

# Values that are secrets themselves (a key *file path*, like tls.private_key, is not one and is recorded).
_SECRET_RE = re.compile(r"password|passwd|passphrase|secret|token|credential|api_key", re.I)


def config_values(cfg) -> dict[str, Any]:
    """The effective configuration as {"section.key": value}, secrets left out."""
    values = {}
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if not dataclasses.is_dataclass(section):
            continue  # "source": where the values came from, not a value
        for k, v in dataclasses.asdict(section).items():
            if not _SECRET_RE.search(k):
                values[f"{f.name}.{k}"] = v
    return values


def config_hash(values: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(values).encode()).hexdigest()


def record_config(store: Store, cfg, actor: str = "node") -> tuple[int, bool]:
    """Record the configuration in effect ("config.loaded"), preceded by "config.changed" naming
    the changed keys when it differs from the last one recorded. Returns (id, changed)."""
    values = config_values(cfg)
    h = config_hash(values)
    with store.tx() as c:
        last = c.execute("SELECT details FROM audit WHERE event = 'config.loaded' ORDER BY id DESC LIMIT 1").fetchone()
        changed = False
        if last is not None:
            old = json.loads(last[0])
            if old.get("hash") != h:
                changed = True
                old_values = old.get("values", {})
                keys = sorted(k for k in values.keys() | old_values.keys() if values.get(k) != old_values.get(k))
                append(c, "config.changed", actor, previous_hash=old.get("hash"), hash=h, keys=keys)
        row_id = append(c, "config.loaded", actor, hash=h, source=cfg.source, values=values)
    return row_id, changed
