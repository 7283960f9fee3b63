"""`hccnode store migrate --to postgresql://...`: a SQLite store copied into an empty PostgreSQL
database (tests/pg_support.py), every table, audit chain verified before and after; then the node
serves from PostgreSQL. Costs about 20 s on 2 cores (two node starts and stops, six CLI runs, no
analysis)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from dicomgen import ct_series
from labs_support import obx, oru
from node_support import WATCHER_HELD

from hccnode.labs import catalog, hl7v2
from hccnode.store import analyses, audit, jobs, outbox
from hccnode.store.db import Store
from hccnode.store.spool import Spool, ingest_file


def _filled_sqlite_store(data_dir, tmp_path) -> Store:
    """A SQLite store with a study (2 instances), a lab result, a finished job, an analysis and an
    outbox row, each written by the library function the node uses."""
    store = Store(data_dir)
    spool = Spool(store)
    for f in ct_series(tmp_path / "in", n=2, size=16):
        assert ingest_file(spool, f, calling_ae="SENDER").outcome == "stored"
    study = store.query("SELECT study_uid FROM studies")[0]["study_uid"]
    hl7v2.handle(store, catalog.load(), oru(obx(1, "4544-3", "41", "%", time="20260101070000+0000")).encode(),
                 peer="127.0.0.1")
    (job_id,) = jobs.queue_stable_studies(store, 0.0)
    job = jobs.claim(store, "test-owner", 60.0)
    assert job is not None and job.id == job_id
    analyses.record(store, study, job_id, "1.2.3.4", data_dir / "outputs" / "x", ["sr.dcm"], {"labs": []})
    assert jobs.complete(store, job_id, "test-owner", {"output_uids": ["1.2.3.4"]})
    path = store.query("SELECT path FROM instances LIMIT 1")[0]["path"]
    assert outbox.enqueue(store, "ORTHANC@127.0.0.1:104", path, study, job_id) is not None
    return store


def _cli(cfg_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hccnode", "-c", str(cfg_path), *args],
                          capture_output=True, text=True, timeout=120)


def _counts(conn, tables) -> dict[str, int]:
    return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def test_migrate_copies_every_table_and_the_node_then_serves_from_postgresql(node_factory, pg_url, tmp_path):
    node = node_factory(study=WATCHER_HELD)
    store = _filled_sqlite_store(node.data_dir, tmp_path)
    store.close()
    studies_before = node.cli("studies")
    assert studies_before.returncode == 0 and "done" in studies_before.stdout

    # A running node refuses; nothing is written to the target.
    node.start()
    refused = node.cli("store", "migrate", "--to", pg_url)
    assert refused.returncode == 1 and "stop every `hccnode serve`" in refused.stderr
    assert "Traceback" not in refused.stderr
    node.stop()
    sq = sqlite3.connect(node.data_dir / "hccnode.db")
    tables = [r[0] for r in sq.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    want = _counts(sq, tables)
    sq.close()
    for table in ("studies", "series", "instances", "instance_versions", "labs", "labs_raw", "jobs", "analyses",
                  "outbox", "audit"):
        assert want[table] > 0, table

    done = node.cli("store", "migrate", "--to", pg_url)
    assert done.returncode == 0, done.stderr
    printed = {line.split()[0]: (int(line.split()[1]), int(line.split()[2]))
               for line in done.stdout.splitlines() if len(line.split()) == 3 and line.split()[1].isdigit()}
    assert printed == {t: (n, n) for t, n in want.items()}
    assert f"audit log intact: {want['audit']} rows" in done.stdout

    target = Store(tmp_path / "unused", url=pg_url)
    assert _counts(target.conn(), tables) == want
    assert audit.verify(target).ok and audit.verify(target).rows == want["audit"]
    target.close()

    # A second migration into the now full database is refused.
    again = node.cli("store", "migrate", "--to", pg_url)
    assert again.returncode == 1 and "is not empty" in again.stderr

    # The node on PostgreSQL: same studies listed, new ids continue after the copied ones, chain intact.
    node.configure(store={"url": pg_url}).start()
    studies_after = node.cli("studies")
    assert studies_after.returncode == 0 and studies_after.stdout == studies_before.stdout
    node.stop()
    target = Store(tmp_path / "unused", url=pg_url)
    new_events = target.query("SELECT id, event FROM audit WHERE id > ? ORDER BY id", (want["audit"],))
    target.close()
    events = [e["event"] for e in new_events]   # the outbox row's failed sends besides
    assert "node.started" in events and events[-1] == "node.stopped"
    verified = node.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"audit log intact: {want['audit'] + len(new_events)} rows" in verified.stdout


def test_migrate_refuses_a_sqlite_target_and_a_missing_source(tmp_path, pg_url):
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "empty"}"\n')
    missing = _cli(cfg, "store", "migrate", "--to", pg_url)
    assert missing.returncode == 1 and "no SQLite store to migrate" in missing.stderr
    wrong = _cli(cfg, "store", "migrate", "--to", "sqlite:///x.db")
    assert wrong.returncode == 1 and "unsupported store URL scheme" in wrong.stderr
