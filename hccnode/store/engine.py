"""The two database engines behind `Store`: the embedded SQLite file (the default, nothing to set
up) and PostgreSQL (`[store] url = "postgresql://user@host:port/db"`, psycopg 3), for a site whose
receivers and workers run on several hosts.

The store modules write one SQL text for both: `?` placeholders, `INSERT ... ON CONFLICT (key) DO
UPDATE` for upserts, `IS NOT DISTINCT FROM` for a NULL-safe comparison and `RETURNING id` for a
new row's id (all SQLite >= 3.39 and PostgreSQL). What differs is here:
- a PostgreSQL connection (`PgConnection`) answers like a `sqlite3.Connection` in autocommit mode
  (`execute` with `?` placeholders, rows readable by index and by column name, `in_transaction`);
- table definitions: `pg_ddl()` turns the SQLite declarations into PostgreSQL ones (identity ids,
  BIGINT, DOUBLE PRECISION for REAL, which is only 4 bytes there, BYTEA for BLOB); a module gives
  its own PostgreSQL text where a translation cannot do (the audit log's triggers);
- write transactions: SQLite takes its database write lock (`BEGIN IMMEDIATE`); PostgreSQL takes
  one transaction-scoped advisory lock (`pg_advisory_xact_lock`), so write transactions keep
  SQLite's one-writer-at-a-time semantics on every host and the audit hash chain stays linear;
- catalogue queries (does a table exist, which triggers guard it).
"""

from __future__ import annotations

import re
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SQLITE, POSTGRESQL = "sqlite", "postgresql"
# Errors from either engine, for the code that answers a failure instead of raising; psycopg's join
# when it is first used (an SQLite node does not import it: 0.2 s at every start and command).
ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)
psycopg = None


def _psycopg():
    """The psycopg module, imported on first use."""
    global psycopg, ERRORS
    if psycopg is None:
        import psycopg as module

        psycopg = module
        ERRORS = (sqlite3.Error, module.Error)
    return psycopg


# pg_advisory_xact_lock keys (64-bit; any constant the site's other programs do not use).
WRITE_LOCK = 0x6863636E6F6465  # "hccnode": every write transaction, schema changes at start-up included


class UrlError(ValueError):
    """A `[store] url` that cannot be used; the message says why (never the password)."""


def kind(url: str) -> str:
    """The engine a store URL names: "" is the embedded SQLite file; postgresql:// (or postgres://)."""
    if not url:
        return SQLITE
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("postgresql", "postgres"):
        return POSTGRESQL
    what = f"unsupported store URL scheme {scheme}://" if scheme else f"{url!r} is not a URL"
    raise UrlError(f"{what}: leave it empty for the embedded SQLite file, or give postgresql://user@host:port/database")


def check_url(url: str) -> str:
    """`url` when usable: a PostgreSQL URL with a host and a database, and no password in it (the
    configuration is recorded in the audit log; libpq reads the password from ~/.pgpass or PGPASSFILE)."""
    if kind(url) == SQLITE:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is not None:
        raise UrlError("the URL holds a password: put it in a pgpass file (~/.pgpass or PGPASSFILE) instead")
    if not parts.hostname or not parts.path.strip("/"):
        raise UrlError("needs a host and a database: postgresql://user@host:port/database")
    try:
        _psycopg()
    except ImportError:
        raise UrlError("PostgreSQL needs the psycopg package (pip install 'psycopg[binary]')") from None
    return url


def safe_url(url: str) -> str:
    """The URL without user or password, for logs and messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"


# -- PostgreSQL connections --------------------------------------------------------------------

class Row(tuple):
    """A result row readable by position and by column name, like sqlite3.Row (`dict(row)` works)."""

    def __new__(cls, values, index: dict[str, int]):
        row = super().__new__(cls, values)
        row._index = index
        return row

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _rows(cursor):
    index = {c.name: i for i, c in enumerate(cursor.description or ())}
    return lambda values: Row(values, index)


_NAMED = re.compile(r"(?<!:):([A-Za-z_]\w*)")


def _pg_sql(sql: str, params) -> str:
    """SQLite placeholders (`?`, `:name`) as psycopg's (`%s`, `%(name)s`); a literal % doubled."""
    if not params:
        return sql
    sql = sql.replace("%", "%%")
    return _NAMED.sub(r"%(\1)s", sql) if isinstance(params, dict) else sql.replace("?", "%s")


class PgConnection:
    """One PostgreSQL connection that answers like a sqlite3.Connection in autocommit mode
    (`isolation_level=None`): statements commit alone unless a BEGIN opened a transaction.

    Values are bound on the client side (psycopg.ClientCursor), as SQLite binds them, so a
    parameter's type comes from its Python value (`? IS NULL` works without a cast)."""

    engine = POSTGRESQL

    def __init__(self, url: str, read_only: bool = False):
        self.write_locked = False  # this transaction holds WRITE_LOCK (set by begin_write)
        pg = _psycopg()
        self._c = pg.connect(url, autocommit=True, cursor_factory=pg.ClientCursor, row_factory=_rows,
                             connect_timeout=30, application_name="hccnode")
        if read_only:
            self._c.execute("SET default_transaction_read_only = on")

    def execute(self, sql: str, params: tuple | list | dict = ()):
        return self._c.execute(_pg_sql(sql, params), params or None)

    def executemany(self, sql: str, rows: list) -> None:
        if rows:
            with self._c.cursor() as cur:
                cur.executemany(_pg_sql(sql, rows[0]), rows)

    def executescript(self, sql: str) -> None:
        self._c.execute(sql)

    @property
    def in_transaction(self) -> bool:
        return self._c.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self._c.close()


def connect_pg(url: str, read_only: bool = False) -> PgConnection:
    return PgConnection(url, read_only)


def is_pg(c) -> bool:
    return isinstance(c, PgConnection)


# -- transactions and locks -------------------------------------------------------------------

def begin_write(c, lock: int = WRITE_LOCK) -> None:
    """Open a write transaction that no other writer runs beside: SQLite's database write lock
    (BEGIN IMMEDIATE, so it cannot deadlock on upgrade), or PostgreSQL's advisory `lock`."""
    if is_pg(c):
        c.execute("BEGIN")
        c.execute(f"SELECT pg_advisory_xact_lock({lock})")
        c.write_locked = lock == WRITE_LOCK
    else:
        c.execute("BEGIN IMMEDIATE")


def serialize(c) -> None:
    """Inside a transaction: make sure it holds the write lock before a read-then-append (the audit
    chain). SQLite's BEGIN IMMEDIATE holds it already, and so does a PostgreSQL transaction opened by
    `begin_write`; another one takes it here (the advisory lock is re-entrant, released at its end)."""
    if is_pg(c) and not c.write_locked:
        c.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")


@contextmanager
def write_transaction(c, lock: int = WRITE_LOCK) -> Iterator[Any]:
    """`begin_write`, then COMMIT, or ROLLBACK on any error (also when the engine rolled back
    already: SQLite does on SQLITE_FULL and I/O errors, PostgreSQL marks the transaction failed)."""
    begin_write(c, lock)
    try:
        yield c
        c.execute("COMMIT")
    except BaseException:
        if c.in_transaction:
            c.execute("ROLLBACK")
        raise
    finally:
        if is_pg(c):
            c.write_locked = False


def group_concat(c, expr: str) -> str:
    """SQL for the comma-joined distinct values of `expr` in a group (order not defined)."""
    return f"string_agg(DISTINCT {expr}, ',')" if is_pg(c) else f"GROUP_CONCAT(DISTINCT {expr})"


def json_field(c, column: str, key: str) -> str:
    """SQL for the text of `key` in the JSON object held (as text) in `column`."""
    return f"({column}::json ->> '{key}')" if is_pg(c) else f"json_extract({column}, '$.{key}')"


def in_list(n: int) -> str:
    """The parenthesised list for `x IN (...)` with n `?` placeholders. An empty list (SQLite takes
    `IN ()`, PostgreSQL does not) is a subquery without rows: false on both."""
    return f"({','.join('?' * n)})" if n else "(SELECT NULL WHERE 1 = 0)"


def insert_id(c, sql: str, params: tuple) -> int:
    """Run an INSERT and return the new row's id (RETURNING id, read to the end so SQLite finishes
    the statement before the transaction commits)."""
    return int(c.execute(sql + " RETURNING id", params).fetchall()[0][0])


# -- catalogue --------------------------------------------------------------------------------

def has_table(c, name: str) -> bool:
    if is_pg(c):
        sql = "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
    else:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return c.execute(sql, (name,)).fetchone() is not None


def restart_identity(c, table: str) -> None:
    """After rows were inserted with their ids: the next id `table` gives is above the largest one
    (PostgreSQL identity columns keep their own counter; SQLite takes the largest id + 1 anyway)."""
    if is_pg(c):
        c.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), MAX(id)) FROM {table}")


def trigger_names(c, table: str) -> set[str]:
    if is_pg(c):
        sql = ("SELECT t.tgname FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid"
               " WHERE r.relname = ? AND NOT t.tgisinternal AND r.relnamespace = current_schema()::regnamespace")
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
    return {r[0] for r in c.execute(sql, (table,))}


def column_names(c, table: str) -> set[str]:
    if is_pg(c):
        return {r[0] for r in c.execute("SELECT column_name FROM information_schema.columns"
                                        " WHERE table_schema = current_schema() AND table_name = ?", (table,))}
    return {r["name"] for r in c.execute(f"PRAGMA table_info({table})")}


# -- table definitions -------------------------------------------------------------------------

_PG_TYPES = (
    (re.compile(r"\bid INTEGER PRIMARY KEY\b"), "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
)


def pg_ddl(sql: str) -> str:
    """SQLite table declarations as PostgreSQL ones: an `id INTEGER PRIMARY KEY` (SQLite's rowid)
    becomes an identity column, INTEGER BIGINT (SQLite integers are 8 bytes), REAL DOUBLE PRECISION
    and BLOB BYTEA. Comments are left as they are. CREATE TRIGGER is SQLite's own syntax: a module
    with triggers registers its PostgreSQL text itself."""
    if re.search(r"\bCREATE TRIGGER\b", sql):
        raise ValueError("CREATE TRIGGER needs a PostgreSQL text of its own (schema(..., postgresql=...))")
    for pattern, replacement in _PG_TYPES:
        sql = pattern.sub(replacement, sql)
    return sql


SCHEMA_VERSION_SQL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""
