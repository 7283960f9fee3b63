"""Benchmark: the cost of an audit append, and of verifying the chain.

In a fresh data directory, appends instance.stored-like events (study UID, patient key, one input
hash, a few details) three ways and prints appends/s for each:
  in-tx      inside a caller's transaction, as the C-STORE path does (`append(conn, ...)` within
             `store.tx()`), 100 per transaction: the cost the audit adds to an ingest transaction;
  marginal   one transaction per instance with a stand-in index INSERT, with and without the
             append: the added time per instance, commit (fsync) included;
  own-tx     `append(store, ...)`: each append its own transaction and durable commit;
each as the median over its transactions (with and without the append interleaved, so a busy
machine moves both alike); then verifies the whole log and prints rows/s. Not run by the tests.

    python bench/audit.py [N] [postgresql://user@host:port/db]

With a PostgreSQL URL (an empty database) the same steps run on it ([store] url), so the two engines
can be compared in one run of each.
"""

from __future__ import annotations

import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hccnode.store import audit, engine  # noqa: E402
from hccnode.store.db import Store  # noqa: E402


def event(store_or_conn, i: int, key: str) -> None:
    audit.append(store_or_conn, "instance.stored", "AE:CT01", study_uid=f"1.2.826.0.1.3680043.8.498.{i // 300}",
                 patient_key=key, input_hashes=[hashlib.sha256(i.to_bytes(8, "big")).hexdigest()],
                 sop=f"1.2.826.0.1.3680043.8.498.{i // 300}.{i}", bytes=525_000, outcome="stored")


def rate(seconds: float) -> str:
    return f"{1 / seconds:,.0f}/s ({seconds * 1e6:,.0f} us each)"


def main(n: int = 5000, url: str = "") -> None:
    with tempfile.TemporaryDirectory() as d:
        store = Store(d, url=url)
        ddl = "CREATE TABLE stand_in (id INTEGER PRIMARY KEY, sop TEXT, sha256 TEXT)"
        store.conn().execute(engine.pg_ddl(ddl) if url else ddl)
        key = store.patient_key("BENCH")

        batches = []
        for start in range(0, n, 100):
            t0 = time.perf_counter()
            with store.tx() as c:
                for i in range(start, min(n, start + 100)):
                    event(c, i, key)
            batches.append((time.perf_counter() - t0) / (min(n, start + 100) - start))
        in_tx = statistics.median(batches)

        m = max(2, n // 5)
        timings: dict[bool, list[float]] = {False: [], True: []}
        for i in range(m):
            with_audit = bool(i % 2)
            t0 = time.perf_counter()
            with store.tx() as c:
                c.execute("INSERT INTO stand_in (sop, sha256) VALUES (?, ?)", (str(i), "ab" * 32))
                if with_audit:
                    event(c, n + i, key)
            timings[with_audit].append(time.perf_counter() - t0)
        without, with_ = statistics.median(timings[False]), statistics.median(timings[True])

        own = []
        for i in range(m // 2):
            t0 = time.perf_counter()
            event(store, n + m + i, key)
            own.append(time.perf_counter() - t0)
        own_tx = statistics.median(own)

        t0 = time.perf_counter()
        verdict = audit.verify(store)
        check = time.perf_counter() - t0
        assert verdict.ok, verdict

    print(f"in-tx    appends inside a caller's transaction: {rate(in_tx)}")
    print(f"marginal one-instance transaction (commit incl.): {rate(without)} without the append, "
          f"{rate(with_)} with it: +{(with_ - without) * 1e6:,.0f} us per instance")
    print(f"own-tx   appends each committed on its own:    {rate(own_tx)}")
    print(f"verify   {verdict.rows} rows: {verdict.rows / check:,.0f} rows/s ({store.where() if url else 'SQLite'})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000, sys.argv[2] if len(sys.argv) > 2 else "")
