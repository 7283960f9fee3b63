"""The node's database: by default one SQLite file (WAL journal), or a PostgreSQL database named by
`[store] url` (hccnode.store.engine); one connection per thread.

Every module that keeps state declares its tables as `CREATE ... IF NOT EXISTS` SQL and
registers it with `schema()`; `Store` applies them all when it opens, so a fresh data
directory needs no set-up step. `synchronous=FULL` because a C-STORE success is only
sent after the index row is committed, and that commit must survive a power cut.

On PostgreSQL the same declarations (translated by `engine.pg_ddl`, or a module's own PostgreSQL
text) are applied at start-up under an advisory lock, and numbered schema changes (`PG_STEPS`)
are applied once each and recorded in the `schema_version` table.
"""

from __future__ import annotations

import fcntl
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

from hccnode.store import engine, pgqueue

_SCHEMAS: list[str] = []
_PG_SCHEMAS: list[str] = []
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


def schema(sql: str, postgresql: str | None = None) -> str:
    """Register table definitions to apply on open; returns `sql` unchanged. `postgresql` is the
    PostgreSQL text where `engine.pg_ddl(sql)` cannot translate it (triggers)."""
    _SCHEMAS.append(sql)
    _PG_SCHEMAS.append(engine.pg_ddl(sql) if postgresql is None else postgresql)
    return sql


_COLUMNS: list[tuple[str, str, str]] = []


def added_column(table: str, name: str, declaration: str) -> None:
    """Register a column added to `table` after databases with the table exist: `Store` adds it
    to an older database on open (new ones get it from the table's CREATE statement)."""
    _COLUMNS.append((table, name, declaration))


_MIGRATIONS: list = []


def migration(needed, apply) -> None:
    """Register a change to older SQLite databases: on open, after the tables and added columns, when
    `needed(connection)` says so, `apply(connection)` runs in a write transaction (foreign keys
    off, as a table rebuild needs), after `needed` is asked again inside it (another process may
    have applied it meanwhile). A current database costs one read, no write lock."""
    _MIGRATIONS.append((needed, apply))


# PostgreSQL schema versions (version, what it does, SQL), applied once each, in order, at start-up
# and recorded in schema_version; the SQL may be a function, called when the step is applied
# (procrastinate is imported only then). Every start also runs the tables' CREATE ... IF NOT EXISTS and
# adds registered columns (both idempotent, as on SQLite); a change that these cannot make (a
# constraint, a type, moving data) is a new step here.
PG_STEPS: tuple[tuple[int, str, str], ...] = (
    (1, "baseline: the tables the schema modules declare", ""),
    (2, "job queue and outbox on procrastinate 3: its schema, and the node's links to it", pgqueue.schema_sql),
)

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
    """The database of one data directory; safe to share between threads. `url` names a PostgreSQL
    database (`postgresql://user@host:port/db`) to use instead of `<data_dir>/hccnode.db`; the data
    directory still holds the spool and the patient-key secret.

    `read_only=True` opens an existing database for reading only (SQLite `mode=ro`, `query_only`):
    no directory, table or secret is created and every write fails, for readers such as the
    status page. `db_path` opens another database file than `<data_dir>/hccnode.db` with the
    same data directory (spool paths resolve there): `audit reverify` runs the analysis on a
    scratch copy of the database, so the node's own records stay as they were.
    """

    def __init__(self, data_dir: str | os.PathLike, read_only: bool = False, db_path: str | os.PathLike | None = None,
                 url: str = ""):
        self.data_dir = Path(data_dir).resolve()
        self.url = engine.check_url(url or "")
        self.engine = engine.kind(self.url)
        self.path = Path(db_path).resolve() if db_path is not None else self.data_dir / "hccnode.db"
        self.read_only = read_only
        self._local = threading.local()
        self._secret: bytes | None = None
        self._group = _GroupCommit()
        self._turn_lock = threading.Lock()
        self._turn_fd: int | None = None
        if self.engine == engine.POSTGRESQL:
            if not read_only:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._migrate_pg()
            return
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

    @classmethod
    def of(cls, cfg, read_only: bool = False) -> "Store":
        """The store a configuration (hccnode.config.Config) names: its data directory and [store] url."""
        return cls(cfg.data_dir, read_only=read_only, url=cfg.store.url)

    def _migrate_pg(self) -> None:
        """Create the tables and apply the numbered steps not yet applied, one process at a time.

        Under the write lock every writer takes first: a lock of its own let a CREATE INDEX IF NOT
        EXISTS (which takes a SHARE lock on its table even when the index exists) wait for a writer's
        table while that writer waited for a table this transaction held, a deadlock PostgreSQL ended
        by failing the start of a worker thread (seen with 2 worker processes starting beside a
        receiver)."""
        for name in SCHEMA_MODULES:
            importlib.import_module(name)
        with engine.write_transaction(self.conn()) as c:
            c.executescript(engine.SCHEMA_VERSION_SQL)
            for sql in _PG_SCHEMAS:
                c.executescript(sql)
            for table, name, declaration in _COLUMNS:
                if name not in engine.column_names(c, table):
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {name} {engine.pg_ddl(declaration)}")
            done = {r[0] for r in c.execute("SELECT version FROM schema_version")}
            for version, what, sql in PG_STEPS:
                if version not in done:
                    sql = sql() if callable(sql) else sql
                    if sql:
                        c.executescript(sql)
                    c.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", (version, what))

    def schema_version(self) -> int | None:
        """The last numbered schema step applied (PostgreSQL), or None (SQLite has no numbered steps)."""
        if self.engine != engine.POSTGRESQL:
            return None
        return self.conn().execute("SELECT MAX(version) FROM schema_version").fetchone()[0]

    def where(self) -> str:
        """The database, for messages: the SQLite file, or the PostgreSQL URL without user or password."""
        return engine.safe_url(self.url) if self.url else str(self.path)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use `tx()` for transactions); on PostgreSQL an
        `engine.PgConnection`, which answers the same calls."""
        c = getattr(self._local, "conn", None)
        if c is None:
            if self.engine == engine.POSTGRESQL:
                c = engine.connect_pg(self.url, self.read_only)
                self._local.conn = c
                return c
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
        if self.engine == engine.POSTGRESQL:
            raise TypeError(f"sqlite-utils works on SQLite only, not on {self.where()}")
        d = getattr(self._local, "db", None)
        if d is None:
            d = sqlite_utils.Database(self.conn())
            self._local.db = d
        return d

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken at once so it cannot deadlock on upgrade: SQLite's BEGIN
        IMMEDIATE, PostgreSQL's advisory write lock (engine.write_transaction); one writer at a time."""
        with engine.write_transaction(self.conn()) as c:
            yield c

    def grouped(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `work(c)` in a write transaction shared with the threads that call at the same
        time (group commit), and return its result once that transaction is durable. One commit,
        so one fsync, serves them all; a caller alone commits at once, never waiting for company.
        `work` runs in a savepoint: if it raises, its own changes are undone, the exception is
        raised to its caller, and the others' work still commits. A failed COMMIT (disk full, I/O
        error) raises in every caller of the batch: nothing of it was kept."""
        return self._group.run(self, work)

    @contextmanager
    def commit_turn(self) -> Iterator[None]:
        """Held by a group commit's leader around its transaction: on SQLite, an flock(2) on
        `<database>-commit.lock`, so the leaders of several processes (receiver processes) take turns
        waking at once when the lock is free, where SQLite's busy handler would sleep 1, 2, 5, 10 ms
        ... between tries (about 8 ms per wait measured with two processes). On PostgreSQL nothing:
        its advisory lock already queues the writers."""
        if self.engine == engine.POSTGRESQL:
            yield
            return
        with self._turn_lock:   # one descriptor per process: the leaders of this Store take turns here
            if self._turn_fd is None:
                self._turn_fd = os.open(self.path.with_name(self.path.name + "-commit.lock"),
                                        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._turn_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._turn_fd, fcntl.LOCK_UN)

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
                with store.commit_turn():
                    with self.lock:   # what arrived while another process committed joins this batch
                        batch, self.pending = batch + self.pending, []
                    _commit_batch(store.conn(), batch)
            except Exception as exc:  # the turn could not be taken (its lock file): nothing was kept
                for other in batch:
                    other.value, other.error = None, exc
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


def _commit_batch(c, batch: list[_Grouped]) -> None:
    """Run each item's work in a savepoint of one write transaction (engine.begin_write), then
    commit; settle every item."""
    try:
        engine.begin_write(c)
        for item in batch:
            c.execute("SAVEPOINT grouped")
            try:
                item.value = item.work(c)
            except Exception as exc:
                if not c.in_transaction:  # the engine rolled the whole transaction back (SQLite: disk full, I/O)
                    raise
                c.execute("ROLLBACK TO SAVEPOINT grouped")
                item.error = exc
            c.execute("RELEASE SAVEPOINT grouped")
        c.execute("COMMIT")
    except BaseException as exc:
        if c.in_transaction:
            c.execute("ROLLBACK")
        for item in batch:   # nothing of the batch was kept: each caller gets the failure
            if item.error is None:
                item.value, item.error = None, exc
        if not isinstance(exc, Exception):
            raise
    finally:
        if engine.is_pg(c):
            c.write_locked = False


_SECRET_LOCK = threading.Lock()


def _load_secret(path: Path) -> bytes:
    """The node's hashing key, created once (0600) on first use."""
    with _SECRET_LOCK:
        if not path.exists():
            # Processes starting at once (receiver processes, roles) each make a key under a name
            # of their own and link it into place: the first link wins and every process reads that
            # one (a shared temporary name and a replace let one fail, or two use different keys).
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, secrets.token_bytes(32))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        return path.read_bytes()
