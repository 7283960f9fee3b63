"""The store's two engines (hccnode.store.engine): `[store] url` checked at load, PostgreSQL's schema
versioned and applied once by concurrent openers, values kept exactly (epoch seconds, bytes), a
read-only store that cannot write, a scratch copy rolled back in time on both engines, and an
analysis on PostgreSQL that `audit reverify` reproduces."""

from __future__ import annotations

import shutil
import threading

import pydicom
import pytest
from pipeline_support import add_labs, phantom_store, scratch_dir

from hccnode import cli, config
from hccnode.pipeline import analyze_study
from hccnode.store import audit, engine, labs
from hccnode.store.db import PG_STEPS, Store
from hccnode.store.scratch import scratch_copy
from conftest import need, wait_until


@pytest.mark.parametrize("url, problem", [
    ("postgresql://node:s3cret@db.example:5432/hccnode", "pgpass"),
    ("mysql://db.example/hccnode", "unsupported store URL scheme mysql://"),
    ("postgresql://db.example:5432", "needs a host and a database"),
    ("postgresql:///hccnode", "needs a host and a database"),
])
def test_store_url_problems_are_named_when_the_configuration_loads(url, problem):
    with pytest.raises(config.ConfigError, match="store.url") as err:
        config.from_dict({"store": {"url": url}})
    assert problem in str(err.value) and "s3cret" not in str(err.value)


def test_default_store_is_the_sqlite_file_in_the_data_directory(tmp_path):
    cfg = config.from_dict({"node": {"data_dir": str(tmp_path / "data")}})
    assert cfg.store.url == ""
    s = Store.of(cfg)
    assert s.engine == engine.SQLITE and s.where() == str(tmp_path / "data" / "hccnode.db")
    assert (tmp_path / "data" / "hccnode.db").is_file() and s.schema_version() is None
    s.close()


def test_postgresql_schema_is_applied_once_by_concurrent_openers(pg_url, tmp_path):
    opened: list[Store] = []
    start = threading.Barrier(3)

    def open_store() -> None:
        start.wait()
        s = Store(tmp_path / "data", url=pg_url)
        opened.append(s)
        s.close()

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(opened) == 3  # no opener failed on another's CREATE TABLE
    s = Store(tmp_path / "data", url=pg_url)
    assert s.query("SELECT version, name FROM schema_version ORDER BY version") == [
        {"version": v, "name": name} for v, name, _ in PG_STEPS]
    assert s.schema_version() == PG_STEPS[-1][0]
    assert s.where() == pg_url.replace("postgres@", "")  # no user (or password) in messages
    s.close()


def test_postgresql_keeps_epoch_seconds_and_bytes_exactly(pg_url, tmp_path):
    s = Store(tmp_path / "data", url=pg_url)
    t = 1733500000.123456  # microseconds: a 4-byte REAL would keep about 7 digits of it
    s.conn().execute("INSERT INTO instance_versions (sop_uid, sha256, path, size, received_at, outcome)"
                     " VALUES (?,?,?,?,?,?)", ("1.2.3", "ab" * 32, "p", 2**40, t, "stored"))
    row = s.query("SELECT size, received_at FROM instance_versions")[0]
    assert row == {"size": 2**40, "received_at": t}
    raw = bytes(range(256)) + b"MSH|%s|?"  # every byte value, and placeholder characters
    raw_id = labs.save_raw(s, raw, source="hl7", outcome="AR", reason="50% of ? unknown")
    (kept,) = labs.raw_messages(s, "hl7", "AR")
    assert (kept["id"], bytes(kept["raw"])) == (raw_id, raw)
    assert s.query("SELECT reason FROM labs_raw")[0]["reason"] == "50% of ? unknown"
    s.close()


def test_a_read_only_postgresql_store_cannot_write(pg_url, tmp_path):
    Store(tmp_path / "data", url=pg_url).close()  # creates the tables
    ro = Store(tmp_path / "data", url=pg_url, read_only=True)
    assert ro.query("SELECT COUNT(*) AS n FROM studies") == [{"n": 0}]
    with pytest.raises(engine.ERRORS, match="read-only"):
        ro.conn().execute("INSERT INTO studies (study_uid, first_received, last_received) VALUES ('1', 0, 0)")
    ro.close()


def test_scratch_copy_holds_the_inputs_as_they_were(store, tmp_path):
    """On both engines the copy is a SQLite file, rolled back to `as_of`: later instances and lab results
    gone, a result they superseded current again; the node's own database unchanged."""
    with store.tx() as c:
        c.execute("INSERT INTO studies (study_uid, first_received, last_received) VALUES ('1.2', 10, 30)")
        c.execute("INSERT INTO series (series_uid, study_uid, first_received, last_received) VALUES ('1.2.1', '1.2', 10, 30)")
        for sop, t in (("1.2.1.1", 10.0), ("1.2.1.2", 30.0)):
            c.execute("INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, transfer_syntax, path, size,"
                      " sha256, received_at) VALUES (?, '1.2.1', '1.2', 'c', 't', 'p', 1, 's', ?)", (sop, t))
        old = engine.insert_id(c, "INSERT INTO labs (patient_id, patient_key, test, slot, code, status, kind, state,"
                               " observed, observed_start, observed_end, source, received_at) VALUES"
                               " ('P', 'k', 'hct', 'hct', 'HCT', 'F', 'final', 'superseded', 'x', 0, 1, 'csv', 10)", ())
        new = engine.insert_id(c, "INSERT INTO labs (patient_id, patient_key, test, slot, code, status, kind, state,"
                               " observed, observed_start, observed_end, source, received_at) VALUES"
                               " ('P', 'k', 'hct', 'hct', 'HCT', 'C', 'final', 'current', 'x', 0, 1, 'csv', 30)", ())
        c.execute("UPDATE labs SET replaced_by = ? WHERE id = ?", (new, old))
    audit.append(store, "node.started", "node")
    scratch = scratch_copy(store, tmp_path, as_of=20.0)
    try:
        assert scratch.engine == engine.SQLITE and scratch.path == tmp_path / "hccnode.db"
        assert [r["sop_uid"] for r in scratch.query("SELECT sop_uid FROM instances")] == ["1.2.1.1"]
        assert scratch.query("SELECT id, state, replaced_by FROM labs") == [{"id": old, "state": "current", "replaced_by": None}]
        assert audit.verify(scratch).rows == 1
    finally:
        scratch.close()
    assert store.query("SELECT COUNT(*) AS n FROM instances") == [{"n": 2}]
    assert store.query("SELECT state FROM labs ORDER BY id") == [{"state": "superseded"}, {"state": "current"}]


def test_an_analysis_on_postgresql_is_recorded_and_reverified(pg_url, capsys):
    """Index, labs, phases, model results, analyses, outbox and audit on PostgreSQL through a real
    analysis of a small CECT phantom; `audit reverify` (scratch copy from PostgreSQL) reproduces it."""
    from hccnode.phantom import StudySpec

    root = scratch_dir("pg-analysis")
    try:
        store, truth, (study,) = phantom_store(
            root, StudySpec(kind="cect", seed=9, slices=8, matrix=48, noise_sd=2.0, seg_phase="equilibrium"),
            url=pg_url)
        add_labs(store, truth, [("hct", 100 * truth.data["hct"], "%", -2.0)])
        analysis = analyze_study(store, study, destinations=["PACS@127.0.0.1:11112"])
        sr_uid = str(pydicom.dcmread(analysis.out_dir / "sr.dcm").SOPInstanceUID)
        assert store.query("SELECT study_uid, sr_uid FROM analyses") == [{"study_uid": study, "sr_uid": sr_uid}]
        assert store.query("SELECT COUNT(*) AS n FROM phases WHERE study_uid = ?", (study,))[0]["n"] >= 2
        assert store.query("SELECT COUNT(*) AS n FROM lab_usage WHERE study_uid = ? AND status = 'matched'",
                           (study,))[0]["n"] >= 1
        assert {r["sop_uid"] for r in store.query("SELECT sop_uid FROM outbox WHERE state = 'pending'")} == set(
            analysis.output_uids)
        cfg = root / "hccnode.toml"
        cfg.write_text(f'[node]\ndata_dir = "{store.data_dir}"\n[store]\nurl = "{pg_url}"\n')
        assert cli.main(["-c", str(cfg), "audit", "reverify", str(analysis.out_dir / "sr.dcm")]) == 0
        assert "reproduced: all" in capsys.readouterr().out
        assert cli.main(["-c", str(cfg), "audit", "verify"]) == 0
        assert "audit log intact" in capsys.readouterr().out
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.network
def test_serve_on_postgresql_indexes_analyses_and_audits(pg_url, node_factory, tmp_path):
    """`hccnode serve` with [store] url: C-STOREs from dcmtk indexed in PostgreSQL, the stable study
    analysed by a worker process, and the audit chain intact."""
    import subprocess

    from dicomgen import ct_series

    node = node_factory(store={"url": pg_url}).start()
    files = ct_series(tmp_path / "in", n=2)
    assert subprocess.run([need("storescu"), "-aec", "HCCNODE", "127.0.0.1", str(node.port), *map(str, files)],
                          capture_output=True, timeout=60).returncode == 0
    store = node.store()
    assert store.engine == engine.POSTGRESQL
    assert sorted(r["sop_uid"] for r in store.query("SELECT sop_uid FROM instances")) == sorted(
        str(pydicom.dcmread(f).SOPInstanceUID) for f in files)
    job = wait_until(lambda: store.query("SELECT state FROM jobs WHERE state NOT IN ('queued', 'running')"), 60,
                     what="the study's job to end")
    assert job == [{"state": "done"}]
    verified = node.cli("audit", "verify")
    assert verified.returncode == 0 and "audit log intact" in verified.stdout
    store.close()
    node.stop()
    assert not (node.data_dir / "hccnode.db").exists()  # nothing went to an SQLite file


def test_studies_listing_joins_modalities_and_counts_on_both_engines(store):
    from hccnode.store import studies

    with store.tx() as c:
        c.execute("INSERT INTO studies (study_uid, first_received, last_received) VALUES ('1.2', 10, 30)")
        for series, modality in (("1.2.1", "MR"), ("1.2.2", "MR"), ("1.2.3", "SR")):
            c.execute("INSERT INTO series (series_uid, study_uid, modality, first_received, last_received)"
                      " VALUES (?, '1.2', ?, 10, 30)", (series, modality))
    (row,) = studies.listing(store, 10)
    assert sorted(row["modalities"].split(",")) == ["MR", "SR"]  # distinct, order not defined
    assert (row["series"], row["instances"], row["job"]) == (3, 0, None)
    assert studies.modalities(store, "1.2") == {"MR", "SR"} and studies.an_instance_path(store, "1.2", "MR") is None


def test_treatment_start_and_paired_analyses_on_both_engines(store, tmp_path):
    """The upsert of a changed date and the JSON field read of the analyses' recorded baseline work on
    each engine: a changed date re-queues the follow-up paired with the study and analysed with the old one."""
    from datetime import datetime

    from hccnode.store import analyses, studies

    with store.tx() as c:
        for uid in ("1.1", "1.2"):
            c.execute("INSERT INTO studies (study_uid, first_received, last_received, seq) VALUES (?, 0, 0, 1)", (uid,))
    analyses.record(store, "1.2", None, "2.9", tmp_path, [], {studies.BASELINE_STUDY: "1.1", studies.TREATMENT_START: None,
                                                               studies.TREATMENT_START_STUDY: None})
    assert analyses.studies_paired_with(store, "1.1") == ["1.2"] and analyses.studies_paired_with(store, "1.2") == []
    first = studies.set_treatment_start(store, "1.1", datetime(2024, 1, 5), "test")
    assert first.changed and [uid for uid, _ in first.requeued] == ["1.2"]
    again = studies.set_treatment_start(store, "1.1", datetime(2024, 1, 9), "test", requeue=False)
    assert again.changed and studies.treatment_start(store, "1.1") == datetime(2024, 1, 9)
    assert store.query("SELECT COUNT(*) AS n FROM treatment_starts") == [{"n": 1}]
    assert audit.verify(store).ok
