"""The durable minimum: the least a Storage SCP must do per instance before it may answer success.

A bare pynetdicom Storage SCP that, for each C-STORE, writes the received bytes (the data set as
sent, after a fixed 128-byte preamble and 'DICM') to a temporary file, fsyncs it, renames it into
the output folder, fsyncs that folder, and commits one row to SQLite (WAL, synchronous=FULL)
before it answers success. No parsing, no checks, no audit: the floor under the node's ingest
(issue 18), which `bench/ingest.py` measures the node against.

    python bench/durable_scp.py OUT_DIR PORT [MAX_PDU]   (MAX_PDU as the node's [node] max_pdu; default 131072)
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DurableMinimum:
    def __init__(self, out: Path):
        self.out = out
        self.tmp = out / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.db_path = out / "index.db"
        with sqlite3.connect(self.db_path) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS instances (sop_uid TEXT PRIMARY KEY, path TEXT NOT NULL,"
                       " size INTEGER NOT NULL)")
        self.local = threading.local()
        self.counter = itertools.count()

    def conn(self) -> sqlite3.Connection:
        c = getattr(self.local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
            c.execute("PRAGMA synchronous=FULL")
            self.local.conn = c
        return c

    def on_store(self, event) -> int:
        sop_uid = str(event.request.AffectedSOPInstanceUID)
        data = event.encoded_dataset(include_meta=False)
        tmp = self.tmp / f"{next(self.counter)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            os.write(fd, b"\0" * 128 + b"DICM")
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.out / f"{sop_uid}.dcm"
        os.rename(tmp, final)
        fsync_dir(self.out)
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT OR REPLACE INTO instances VALUES (?,?,?)", (sop_uid, final.name, len(data)))
        c.execute("COMMIT")
        return 0x0000


def main(argv: list[str]) -> int:
    out, port = Path(argv[0]), int(argv[1])
    max_pdu = int(argv[2]) if len(argv) > 2 else 131072
    scp = DurableMinimum(out)
    ae = AE(ae_title="DURABLE")
    ae.maximum_pdu_size = max_pdu  # the same as the node's in a comparison
    ae.maximum_associations = 16
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, scp.on_store)])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
