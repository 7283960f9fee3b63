"""`hccnode audit verify / show / export` (reverify: test_reverify.py) as an administrator runs them: read-only, exit codes, every option documented.
The node's store is each engine in turn (conftest's `store`: SQLite, and PostgreSQL named by [store] url)."""

from __future__ import annotations

import argparse
import csv
import io
import sqlite3
import threading

import pytest

from hccnode import cli
from hccnode.store import audit
from hccnode.store.db import Store


@pytest.fixture
def node(tmp_path, monkeypatch, store):
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{store.data_dir}"\n[store]\nurl = "{store.url}"\n')
    monkeypatch.delenv("HCCNODE_CONFIG", raising=False)
    audit.append(store, "association.accepted", "AE:CT01", peer="127.0.0.1")
    audit.append(store, "instance.stored", "AE:CT01", study_uid="1.2.3", input_hashes=["ab" * 32], bytes=10)
    audit.append(store, "instance.stored", "AE:CT01", study_uid="9.9.9", input_hashes=["cd" * 32], bytes=11)
    audit.append(store, "output.created", "worker", study_uid="1.2.3", output_uids=["1.2.3.100"],
                 card_versions=["p001@1.0.0"], kind="SR")

    def run(*args):
        return cli.main(["-c", str(cfg), "audit", *args])

    run.store = store
    return run


def drop_trigger(store: Store, name: str) -> None:
    store.conn().execute(f"DROP TRIGGER {name}" + (" ON audit" if store.url else ""))


def test_verify_intact_exits_0_and_prints_the_head(node, capsys):
    assert node("verify") == 0
    out = capsys.readouterr().out
    assert "intact: 4 rows" in out and audit.verify(node.store).head_hash in out


def test_verify_against_a_recorded_head(node, capsys):
    assert node("verify") == 0
    recorded = capsys.readouterr().out.split("head ")[1].split()[0]  # "ID:HASH", as printed
    audit.append(node.store, "node.stopped", "node")
    assert node("verify", "--head", recorded) == 0
    drop_trigger(node.store, "audit_no_delete")
    node.store.conn().execute("DELETE FROM audit WHERE id >= 3")
    capsys.readouterr()
    assert node("verify") == 0  # the chain alone cannot tell
    assert node("verify", "--head", recorded) == 1
    assert "row 4: truncated" in capsys.readouterr().err
    assert node("verify", "--head", "4:nothex") == 2


def test_verify_tampered_exits_1_naming_the_row(node, capsys):
    drop_trigger(node.store, "audit_no_update")
    node.store.conn().execute("""UPDATE audit SET details = '{"bytes":12}' WHERE id = 3""")
    assert node("verify") == 1
    err = capsys.readouterr().err
    assert "row 3: hash mismatch" in err
    assert "triggers are missing" in err  # verify reads only: it does not quietly re-create them


def test_verify_after_concurrent_writers_finds_one_intact_chain(node, capsys):
    n_threads, per_thread = 4, 25
    start = threading.Barrier(n_threads)

    def writer(k: int) -> None:
        s = Store(node.store.data_dir, url=node.store.url)
        start.wait()
        for i in range(per_thread):
            audit.append(s, "job.started", f"worker-{k}", study_uid=f"1.9.{k}", i=i)
        s.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert node("verify") == 0
    assert f"intact: {4 + n_threads * per_thread} rows" in capsys.readouterr().out


def test_show_prints_one_studys_history_in_order(node, capsys):
    assert node("show", "1.2.3") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert "#2" in lines[0] and "instance.stored" in lines[0] and "ab" * 32 in lines[0]
    assert "#4" in lines[1] and "output.created" in lines[1] and "1.2.3.100" in lines[1] and "p001@1.0.0" in lines[1]
    assert node("show", "1.2.3", "--since", "2999-01-01") == 0
    assert "no audit events" in capsys.readouterr().out


def test_export_csv_has_every_column_and_row(node, capsys, tmp_path):
    assert node("export", "--csv") == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0] == list(audit.COLUMNS)
    db_rows = [[("" if v is None else str(v)) for v in r] for r in
               node.store.conn().execute(f"SELECT {', '.join(audit.COLUMNS)} FROM audit ORDER BY id")]
    assert table[1:] == db_rows
    out = tmp_path / "audit.csv"
    assert node("export", "--csv", str(out)) == 0
    with open(out, newline="", encoding="utf-8") as f:
        assert list(csv.reader(f))[1:] == db_rows


def test_export_sqlite_copy_verifies_with_db_option(node, tmp_path, capsys):
    out = tmp_path / "copy.db"
    assert node("export", "--sqlite", str(out)) == 0
    assert node("verify", "--db", str(out)) == 0
    assert "intact: 4 rows" in capsys.readouterr().out
    assert node("export", "--sqlite", str(out)) == 2  # never overwrites
    c = sqlite3.connect(out)
    c.executescript("DROP TRIGGER audit_no_delete;")
    c.execute("DELETE FROM audit WHERE id = 2")
    c.commit()
    assert node("verify", "--db", str(out)) == 1
    assert "row 3: gap in ids" in capsys.readouterr().err


def test_usage_and_runtime_errors(node, tmp_path, capsys):
    assert node("show", "1.2.3", "--since", "last week") == 2
    assert "--since" in capsys.readouterr().err
    assert node("verify", "--db", str(tmp_path / "missing.db")) == 2
    assert node("export") == 2  # a format is required
    empty = tmp_path / "empty.toml"
    empty.write_text(f'[node]\ndata_dir = "{tmp_path / "nothing"}"\n')
    assert cli.main(["-c", str(empty), "audit", "verify"]) == 1
    assert "recorded nothing yet" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()  # reading never creates a database


def test_help_documents_every_option(capsys):
    assert cli.main(["audit", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("verify", "show", "export", "reverify"))
    parser = cli.build_parser()
    audit_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["audit"]
    subs = next(a for a in audit_parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subs) == {"verify", "show", "export", "reverify"}
    for name, p in subs.items():
        assert p.description, name
        for a in p._actions:
            if a.dest != "help":
                assert a.help, f"audit {name} {a.dest} is undocumented"
        assert cli.main(["audit", name, "--help"]) == 0
        text = capsys.readouterr().out
        for a in p._actions:
            for opt in a.option_strings:
                assert opt in text
