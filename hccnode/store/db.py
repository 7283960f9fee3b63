"""The node's SQLite database: one file, WAL journal, one connection per thread.

Every module that keeps state declares its tables as `CREATE ... IF NOT EXISTS` SQL and
registers it with `schema()`; `Store` applies them all when it opens, so a fresh data
directory needs no set-up step. `synchronous=FULL` because a C-STORE success is only
sent after the index row is committed, and that commit must survive a power cut.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils

_SCHEMAS: list[str] = []
# Modules that declare tables; Store imports them all, so any entry point gets every table.
SCHEMA_MODULES = (
    "hccnode.store.jobs",
    "hccnode.store.outbox",
    "hccnode.store.labs",
    "hccnode.store.model_results",
    "hccnode.store.audit",
    "hccnode.store.phases",
    "hccnode.store.analyses",
    "hccnode.store.studies",
)


def schema(sql: str) -> str:
    """Register table definitions to apply on open; returns `sql` unchanged."""
    _SCHEMAS.append(sql)
    return sql


_COLUMNS: list[tuple[str, str, str]] = []


def added_column(table: str, name: str, declaration: str) -> None:
    """Register a column added to `table` after databases with the table exist: `Store` adds it
    to an older database on open (new ones get it from the table's CREATE statement)."""
    _COLUMNS.append((table, name, declaration))


_MIGRATIONS: list = []


def migration(needed, apply) -> None:
    """Register a change to older databases: on open, after the tables and added columns, when
    `needed(connection)` says so, `apply(connection)` runs in a write transaction (foreign keys
    off, as a table rebuild needs), after `needed` is asked again inside it (another process may
    have applied it meanwhile). A current database costs one read, no write lock."""
    _MIGRATIONS.append((needed, apply))


CORE = schema(
    """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_key TEXT,              -- keyed hash of issuer + patient ID, never the ID
    study_date TEXT,
    study_time TEXT,
    study_description TEXT,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    seq INTEGER NOT NULL DEFAULT 0  -- bumped on every new or changed instance
);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT,
    series_number INTEGER,
    series_description TEXT,
    image_type TEXT,
    manufacturer TEXT,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,            -- relative to the data directory
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT,
    modality TEXT,
    instance_number INTEGER,
    image_type TEXT,               -- values joined with '\\' as in the header
    series_description TEXT,
    acquisition_date TEXT,
    acquisition_time TEXT,
    content_time TEXT,
    contrast_agent TEXT,
    contrast_start_time TEXT,
    contrast_route TEXT,
    image_position TEXT,           -- JSON [x, y, z] mm
    image_orientation TEXT,        -- JSON, 6 direction cosines
    slice_location REAL,
    slice_thickness REAL,
    pixel_spacing TEXT,            -- JSON [row, column] mm
    rows INTEGER,
    columns INTEGER,
    number_of_frames INTEGER,
    rescale_slope REAL,
    rescale_intercept REAL,
    kvp REAL,
    diffusion_b_value REAL,
    echo_time REAL,
    repetition_time REAL,
    manufacturer TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
-- Every version of every instance ever received, including replaced and duplicate ones.
CREATE TABLE IF NOT EXISTS instance_versions (
    id INTEGER PRIMARY KEY,
    sop_uid TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    calling_ae TEXT,
    outcome TEXT NOT NULL          -- stored | duplicate | replaced (this one was superseded)
);
CREATE INDEX IF NOT EXISTS versions_sop ON instance_versions(sop_uid);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    calling_ae TEXT,
    sop_uid TEXT,                  -- from the C-STORE request, the dataset may be unreadable
    sop_class_uid TEXT,
    path TEXT,                     -- raw bytes as received; NULL if even writing failed
    size INTEGER,
    status INTEGER NOT NULL,       -- the DIMSE status we answered
    reason TEXT NOT NULL
);
"""
)


def now() -> float:
    return time.time()


class Store:
    """The database of one data directory; safe to share between threads.

    `read_only=True` opens an existing database for reading only (SQLite `mode=ro`, `query_only`):
    no directory, table or secret is created and every write fails, for readers such as the
    status page. `db_path` opens another database file than `<data_dir>/hccnode.db` with the
    same data directory (spool paths resolve there): `audit reverify` runs the analysis on a
    scratch copy of the database, so the node's own records stay as they were.
    """

    def __init__(self, data_dir: str | os.PathLike, read_only: bool = False, db_path: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.path = Path(db_path).resolve() if db_path is not None else self.data_dir / "hccnode.db"
        self.read_only = read_only
        self._local = threading.local()
        self._secret: bytes | None = None
        self._group = _GroupCommit()
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: no database (has the node ever started here?)")
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name in SCHEMA_MODULES:
            importlib.import_module(name)
        conn = self.conn()
        conn.execute("PRAGMA journal_mode=WAL")
        for sql in _SCHEMAS:
            conn.executescript(sql)
        for table, name, declaration in _COLUMNS:
            if name not in {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}:
                try:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
                except sqlite3.OperationalError as exc:  # another process added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise
        if any(needed(conn) for needed, _ in _MIGRATIONS):
            conn.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set before it
            try:
                with self.tx() as c:
                    for needed, apply in _MIGRATIONS:
                        if needed(c):
                            apply(c)
            finally:
                conn.execute("PRAGMA foreign_keys=ON")

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use `tx()` for transactions)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.read_only:
                c = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30.0, isolation_level=None,
                                    check_same_thread=True)
                c.execute("PRAGMA query_only=ON")
            else:
                c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=True)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
        return c

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils view of this thread's connection, for queries and tables."""
        d = getattr(self._local, "db", None)
        if d is None:
            d = sqlite_utils.Database(self.conn())
            self._local.db = d
        return d

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once (BEGIN IMMEDIATE) so it cannot deadlock on upgrade."""
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
            c.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (it does on SQLITE_FULL and I/O errors); a
            # failed COMMIT must not leave the transaction, and the write lock, open.
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def grouped(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `work(c)` in a write transaction shared with the threads that call at the same
        time (group commit), and return its result once that transaction is durable. One commit,
        so one fsync, serves them all; a caller alone commits at once, never waiting for company.
        `work` runs in a savepoint: if it raises, its own changes are undone, the exception is
        raised to its caller, and the others' work still commits. A failed COMMIT (disk full, I/O
        error) raises in every caller of the batch: nothing of it was kept."""
        return self._group.run(self, work)

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict]:
        return [dict(r) for r in self.conn().execute(sql, params)]

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None
            self._local.db = None

    def patient_key(self, patient_id: str | None, issuer: str | None = None) -> str | None:
        """Keyed hash of issuer + patient ID: stable within this node, not reversible without its secret."""
        if not patient_id:
            return None
        if self._secret is None:
            self._secret = _load_secret(self.data_dir / "secret.key")
        msg = f"{issuer or ''}\x00{patient_id}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:16]


class _Grouped:
    """One caller's work in a group commit: what it returned or raised, and when it is settled."""

    def __init__(self, work: Callable[[sqlite3.Connection], Any]):
        self.work = work
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Event()   # set when settled, or when this caller is to lead the next batch


class _GroupCommit:
    """Leader/follower group commit. The first caller with nobody committing leads: it takes
    every pending work item, runs them in one transaction in its own thread and commits. Callers
    arriving meanwhile wait; when the batch is durable the leader wakes them, hands the lead to the
    oldest still pending (whose batch takes all pending then) and returns: nobody commits work
    that arrived after its own, and a single sender never waits."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pending: list[_Grouped] = []
        self.busy = False

    def run(self, store: Store, work: Callable[[sqlite3.Connection], Any]) -> Any:
        item = _Grouped(work)
        with self.lock:
            self.pending.append(item)
            lead = not self.busy
            self.busy = True
        if not lead:
            item.wake.wait()
        if not item.done:  # leading
            with self.lock:
                batch, self.pending = self.pending, []
            try:
                _commit_batch(store.conn(), batch)
            finally:
                for other in batch:
                    other.done = True
                    if other is not item:
                        other.wake.set()
                with self.lock:
                    if self.pending:
                        self.pending[0].wake.set()
                    else:
                        self.busy = False
        if item.error is not None:
            raise item.error
        return item.value


def _commit_batch(c: sqlite3.Connection, batch: list[_Grouped]) -> None:
    """Run each item's work in a savepoint of one transaction, then commit; settle every item."""
    try:
        c.execute("BEGIN IMMEDIATE")
        for item in batch:
            c.execute("SAVEPOINT grouped")
            try:
                item.value = item.work(c)
            except Exception as exc:
                if not c.in_transaction:  # SQLite rolled the whole transaction back (disk full, I/O)
                    raise
                c.execute("ROLLBACK TO grouped")
                item.error = exc
            c.execute("RELEASE grouped")
        c.execute("COMMIT")
    except BaseException as exc:
        if c.in_transaction:
            c.execute("ROLLBACK")
        for item in batch:   # nothing of the batch was kept: each caller gets the failure
            if item.error is None:
                item.value, item.error = None, exc
        if not isinstance(exc, Exception):
            raise


_SECRET_LOCK = threading.Lock()


def _load_secret(path: Path) -> bytes:
    """The node's hashing key, created once (0600) on first use."""
    with _SECRET_LOCK:
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        return path.read_bytes()
