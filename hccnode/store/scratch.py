"""A scratch copy of the node's database, optionally as it was at a time: `audit reverify` runs an
analysis on it so that the node's own records stay as they were."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hccnode.store.db import Store


def scratch_copy(store: Store, where: Path, as_of: float | None) -> Store:
    """A copy of `store`'s database in `where`, rolled back to the inputs it held at `as_of` (epoch
    seconds) when given: lab results and instances received later are removed, and results they
    superseded or withdrew are current again."""
    path = where / "hccnode.db"
    dst = sqlite3.connect(path)
    try:
        store.conn().backup(dst)
    finally:
        dst.close()
    scratch = Store(store.data_dir, db_path=path)
    if as_of is not None:
        with scratch.tx() as c:
            c.execute("DELETE FROM labs WHERE received_at > ?", (as_of,))
            c.execute("UPDATE labs SET state = 'current', replaced_by = NULL WHERE replaced_by IS NOT NULL"
                      " AND replaced_by NOT IN (SELECT id FROM labs)")
            c.execute("DELETE FROM instances WHERE received_at > ?", (as_of,))
    return scratch
