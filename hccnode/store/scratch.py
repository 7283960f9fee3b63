"""A scratch copy of the node's database, optionally as it was at a time: `audit reverify` runs an
analysis on it so that the node's own records stay as they were. The copy is always a SQLite file:
of a SQLite store by the backup API, of a PostgreSQL store table by table."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hccnode.store import engine
from hccnode.store.db import Store


def scratch_copy(store: Store, where: Path, as_of: float | None) -> Store:
    """A copy of `store`'s database in `where`, rolled back to the inputs it held at `as_of` (epoch
    seconds) when given: lab results and instances received later are removed, and results they
    superseded or withdrew are current again."""
    path = where / "hccnode.db"
    if store.engine == engine.SQLITE:
        dst = sqlite3.connect(path)
        try:
            store.conn().backup(dst)
        finally:
            dst.close()
    scratch = Store(store.data_dir, db_path=path)
    if store.engine != engine.SQLITE:
        _copy_tables(store, scratch)
    if as_of is not None:
        with scratch.tx() as c:
            c.execute("DELETE FROM labs WHERE received_at > ?", (as_of,))
            c.execute("UPDATE labs SET state = 'current', replaced_by = NULL WHERE replaced_by IS NOT NULL"
                      " AND replaced_by NOT IN (SELECT id FROM labs)")
            c.execute("DELETE FROM instances WHERE received_at > ?", (as_of,))
    return scratch


def _copy_tables(source: Store, scratch: Store) -> None:
    """Every row of every table the scratch database has, from `source` (the columns both have), in
    one transaction with foreign keys off (tables are copied in name order, not in dependency order)."""
    src, dst = source.conn(), scratch.conn()
    tables = [r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                                        " ORDER BY name")]
    dst.execute("PRAGMA foreign_keys=OFF")
    try:
        with scratch.tx() as c:
            for table in tables:
                if not engine.has_table(src, table):
                    continue
                cols = sorted(engine.column_names(dst, table) & engine.column_names(src, table))
                names = ", ".join(cols)
                c.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(cols))})",
                              (tuple(r) for r in src.execute(f"SELECT {names} FROM {table}")))
    finally:
        dst.execute("PRAGMA foreign_keys=ON")
