"""The command line: every command documented, exit codes, no PHI in logs."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

import pytest

from hccnode import cli, log


def commands(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command, nested ones included: {"serve": parser, "labs import": parser, ...}."""
    parser = parser or cli.build_parser()
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                found[full] = sub
                found.update(commands(sub, full + " "))
    return found


def test_help_lists_every_command_and_each_has_a_description(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    cmds = commands()
    assert {"serve", "echo", "send", "studies", "jobs", "outbox"} <= set(cmds)
    for name, p in cmds.items():
        if " " not in name:
            assert name in out
        assert p.description, f"{name} has no description"
        for a in p._actions:
            if a.dest != "help" and not isinstance(a, argparse._SubParsersAction):
                assert a.help, f"{name} {a.dest} is undocumented"


def test_every_command_is_documented_in_the_readme():
    from pathlib import Path
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for name, p in commands().items():
        has_subcommands = any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
        if not has_subcommands:
            assert f"hccnode {name}" in readme, f"README does not document `hccnode {name}`"


def test_usage_errors_exit_2(tmp_path, capsys):
    assert cli.main(["send"]) == 2                        # missing arguments
    assert cli.main(["send", "x.dcm", "--to", "nonsense"]) == 2
    assert "is not AE@host:port" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nport = 'x'\n")
    assert cli.main(["-c", str(bad), "studies"]) == 2
    assert "node.port" in capsys.readouterr().err


def test_runtime_errors_exit_1(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[node]\ndata_dir = '{tmp_path / 'd'}'\n")
    from conftest import free_port
    assert cli.main(["-c", str(cfg), "echo", f"NOBODY@127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert "connection refused" in capsys.readouterr().err


def test_log_event_refuses_phi_fields_and_formats_one_line(caplog):
    with pytest.raises(ValueError):
        log.event("x", patient_id="123")
    log.setup("INFO")
    log.LOGGER.propagate = True
    with caplog.at_level(logging.INFO, logger="hccnode"):
        log.event("instance.stored", sop="1.2.3", reason="two words")
    assert caplog.messages[-1] == 'instance.stored sop=1.2.3 reason="two words"'


def test_node_process_does_not_load_analysis_libraries():
    """The serving process hands analysis to worker processes; loading SimpleITK, highdicom or
    matplotlib there would cost ~150 MB of RSS for nothing (issue 3: node RSS < 300 MB)."""
    code = ("import sys; from hccnode import cli, node; cli.build_parser(); "
            "print(sorted(m for m in ('SimpleITK', 'highdicom', 'matplotlib', 'sklearn', 'lifelines') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
