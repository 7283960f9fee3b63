"""`hccnode labs import / show / match` as a user runs them; patient IDs reach the screen, never the log."""

import pytest

from hccnode import cli


@pytest.fixture
def run(tmp_path, monkeypatch, store):
    """The CLI on the node's store: each engine in turn (conftest's `store`)."""
    cfg = tmp_path / "hccnode.toml"
    log = tmp_path / "node.log"
    cfg.write_text(f'[node]\ndata_dir = "{store.data_dir}"\n[store]\nurl = "{store.url}"\n'
                   f'[log]\nfile = "{log}"\nlevel = "DEBUG"\n')
    monkeypatch.delenv("HCCNODE_CONFIG", raising=False)

    def _run(*args):
        return cli.main(["-c", str(cfg), "labs", *args])

    _run.log = log
    return _run


def csv(tmp_path, text):
    p = tmp_path / "labs.csv"
    p.write_text("patient_id,test,value,unit,time\n" + text)
    return str(p)


def test_import_show_and_match(run, tmp_path, capsys):
    f = csv(tmp_path, "PAT-777,HCT,42,%,2024-01-05T08:00\nPAT-777,crp,<5,mg/L,2024-01-05T08:00\n")
    assert run("import", f) == 0
    assert "2 row(s) read, 2 stored, 0 skipped" in capsys.readouterr().out
    assert run("show", "PAT-777") == 0
    out = capsys.readouterr().out
    assert "hct" in out and "0.42" in out and "42 %" in out and "<5 mg/L" in out
    assert run("match", "PAT-777", "--at", "2024-01-05T10:00", "--paper", "000", "--test", "HCT") == 0
    assert "matched" in capsys.readouterr().out
    assert "PAT-777" not in run.log.read_text()


def test_import_with_errors_imports_nothing_and_exits_1(run, tmp_path, capsys):
    f = csv(tmp_path, "P1,HCT,42,%,2024-01-05T08:00\nP1,HCT,42,mmol/L,2024-01-05T08:00\n")
    assert run("import", f) == 1
    err = capsys.readouterr().err
    assert "labs.csv: row 3, column 'unit'" in err and "nothing imported" in err
    assert run("show", "P1") == 0 and "no results" in capsys.readouterr().out
    assert run("import", f, "--skip-bad-rows") == 0
    out = capsys.readouterr().out
    assert "1 stored, 1 skipped" in out and "skipped: labs.csv: row 3, column 'unit'" in out


def test_usage_errors_exit_2(run, tmp_path, capsys):
    assert run("import", str(tmp_path / "missing.csv")) == 2
    assert run("match", "P1", "--at", "yesterday", "--paper", "000") == 2
    assert run("show", "P1", "--test", "nonsense") == 2


def test_reprocess_reports_what_it_retried(run, capsys):
    assert run("reprocess") == 0
    assert "0 message(s) retried, 0 accepted" in capsys.readouterr().out
