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
