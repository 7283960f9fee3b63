"""The store's schema: every table is created by every process that opens the store."""

from __future__ import annotations

import subprocess
import sys


def test_every_table_definition_is_applied_by_every_process_that_opens_the_store():
    """A table registered only by a module the node process never imports (e.g. the analysis
    pipeline) would be created by whichever process first imports it, as a write: on a full disk,
    or in a read-only process, that fails. So every registering module is in SCHEMA_MODULES."""
    code = """
import importlib, pkgutil, hccnode
from hccnode.store import db
for name in db.SCHEMA_MODULES:
    importlib.import_module(name)
known = len(db._SCHEMAS)
for m in pkgutil.walk_packages(hccnode.__path__, "hccnode."):
    if m.name not in ("hccnode.__main__",):
        importlib.import_module(m.name)
print(known, len(db._SCHEMAS))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1], "a module registers a schema but is not in hccnode.store.db.SCHEMA_MODULES"


def test_group_commit_commits_each_callers_work_and_undoes_only_the_one_that_fails(tmp_path):
    """Callers arriving while a commit runs are committed together in the next transaction; one
    whose work raises gets its exception and leaves no row, the others' rows are kept."""
    import threading
    import time

    from hccnode.store.db import Store

    store = Store(tmp_path / "data")
    store.conn().execute("CREATE TABLE g (k INTEGER PRIMARY KEY)")
    leading, release = threading.Event(), threading.Event()
    results: dict[int, object] = {}

    def work(k):
        def run(c):
            c.execute("INSERT INTO g VALUES (?)", (k,))
            if k == 0:            # the first leader holds its batch open until the others queue
                leading.set()
                release.wait(30)
            if k == 3:
                raise ValueError("bad instance")
            return k * 10
        return run

    def call(k):
        try:
            results[k] = store.grouped(work(k))
        except ValueError as exc:
            results[k] = exc

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    assert leading.wait(30)
    threads += [threading.Thread(target=call, args=(k,)) for k in range(1, 8)]
    for t in threads[1:]:
        t.start()
    for _ in range(3000):          # bounded: until the seven wait as one batch behind the leader
        if len(store._group.pending) == 7:
            break
        time.sleep(0.01)
    assert len(store._group.pending) == 7
    release.set()
    for t in threads:
        t.join(30)
    assert {k: v for k, v in results.items() if k != 3} == {k: k * 10 for k in range(8) if k != 3}
    assert isinstance(results[3], ValueError)
    assert [r["k"] for r in store.query("SELECT k FROM g ORDER BY k")] == [0, 1, 2, 4, 5, 6, 7]
    assert not store.conn().in_transaction


def test_a_patient_key_secret_made_by_another_process_meanwhile_is_the_one_used(tmp_path, monkeypatch):
    """Receiver processes starting at once on a fresh data directory: each finds no key and makes
    one; the first in place is the one every process uses (else patient keys would differ)."""
    from hccnode.store import db

    key, theirs = tmp_path / "secret.key", b"t" * 32

    def token_bytes(n: int) -> bytes:
        key.write_bytes(theirs)      # the other process links its key in while this one makes its own
        return b"m" * n

    monkeypatch.setattr(db.secrets, "token_bytes", token_bytes)
    assert db._load_secret(key) == theirs
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]   # no temporary file left
