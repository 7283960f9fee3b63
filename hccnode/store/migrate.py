"""Moving a site from the embedded SQLite file to PostgreSQL (`hccnode store migrate --to URL`).

While no node serves from the data directory (`store.running`), every table of
`DATA_DIR/hccnode.db` is copied, rows and ids as they are, into an empty PostgreSQL database, in one
transaction (a failure leaves the target as it was). The audit chain is verified on the source
before and on the target after, where the source's head must be found again; the rows of each table
are counted on both sides and must be equal. The spool, outputs and secret.key stay in the data
directory, which the node keeps using with `[store] url` set to the target.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from hccnode.store import audit, engine, running
from hccnode.store.db import Store

BATCH = 1000  # rows per INSERT round trip


class MigrateError(ValueError):
    """The store cannot be migrated; the message says why."""


@dataclass
class Report:
    counts: list[tuple[str, int, int]] = field(default_factory=list)  # (table, source rows, target rows)
    source_audit: str = ""
    target_audit: str = ""


def _tables(c: sqlite3.Connection) -> list[str]:
    """The source's tables, each after the tables its foreign keys name (parents first)."""
    names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                     " AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    parents = {t: {r["table"] for r in c.execute(f"PRAGMA foreign_key_list({t})")} - {t} for t in names}
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [t for t in names if t not in ordered and parents[t] <= set(ordered)]
        if not ready:
            raise MigrateError(f"circular foreign keys between {sorted(set(names) - set(ordered))}")
        ordered += ready
    return ordered


def _count(c, table: str) -> int:
    return int(c.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def _check_empty(target: Store, tables: list[str]) -> None:
    c = target.conn()
    full = [t for t in tables if engine.has_table(c, t) and _count(c, t)]
    if full:
        raise MigrateError(f"{target.where()} is not empty ({', '.join(full)} hold rows): migrate into a new database")


def migrate(data_dir: str | Path, to_url: str) -> Report:
    """Copy the SQLite store of `data_dir` into the empty PostgreSQL database `to_url`; returns the
    per-table row counts and both audit verdicts. MigrateError (or store.running.NodeRunning) when
    the node runs, the source is missing or its audit chain is broken, the target is not PostgreSQL or
    not empty, or the copy does not match."""
    data_dir = Path(data_dir).resolve()
    if engine.kind(to_url) != engine.POSTGRESQL:
        raise MigrateError("--to must be a PostgreSQL URL: postgresql://user@host:port/database")
    engine.check_url(to_url)
    with running.stopped(data_dir):
        if not (data_dir / "hccnode.db").is_file():
            raise MigrateError(f"{data_dir / 'hccnode.db'}: no SQLite store to migrate")
        source = Store(data_dir, read_only=True)
        target = Store(data_dir, url=to_url)  # creates the tables (schema_version included)
        try:
            return _copy(source, target)
        finally:
            source.close()
            target.close()


def _copy(source: Store, target: Store) -> Report:
    src = source.conn()
    report = Report()
    before = audit.verify(src)
    report.source_audit = str(before)
    if not before.ok:
        raise MigrateError(f"the source's {before}: not migrated")
    tables = _tables(src)
    _check_empty(target, tables)
    c = target.conn()
    missing = [t for t in tables if not engine.has_table(c, t)]
    if missing:
        raise MigrateError(f"the target has no table {', '.join(missing)}: is this hccnode version older than the store's?")
    with engine.write_transaction(c) as tc:
        for table in tables:
            columns = [r["name"] for r in src.execute(f"PRAGMA table_info({table})")]
            lacking = set(columns) - engine.column_names(tc, table)
            if lacking:
                raise MigrateError(f"the target's table {table} has no column {', '.join(sorted(lacking))}")
            insert = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})")
            cur = src.execute(f"SELECT {', '.join(columns)} FROM {table}")
            while rows := cur.fetchmany(BATCH):
                tc.executemany(insert, [tuple(r) for r in rows])
            if "id" in columns:  # identity columns continue after the copied ids
                engine.restart_identity(tc, table)
            report.counts.append((table, _count(src, table), _count(tc, table)))
        unequal = [f"{t} {a} -> {b}" for t, a, b in report.counts if a != b]
        if unequal:
            raise MigrateError(f"row counts differ ({'; '.join(unequal)}): nothing migrated")
    after = audit.verify(target, expect=before.head_id and (before.head_id, before.head_hash))
    report.target_audit = str(after)
    if not after.ok or after.rows != before.rows:
        raise MigrateError(f"the target's {after} after the copy ({before.rows} rows in the source)")
    return report
