"""hccnode report template: a thin shell over load_template."""

import shutil

import pytest

from hccnode import cli
from hccnode.report.templates import MEASUREMENTS_FILE, default_dir


@pytest.fixture
def run(tmp_path, capsys):
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")

    def _run(*args):
        rc = cli.main(["-c", str(cfg), "report", *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return _run


def test_report_is_registered():
    assert "hccnode.report.commands" in cli.COMMAND_MODULES


def test_template_lists_entries_with_codes_and_units(run):
    rc, out, _ = run("template")
    assert rc == 0
    assert "paper001.ecv_cect: (ECV, 99HCCNODE, \"Extracellular volume fraction\") in %" in out
    assert "paper003.adc_mean: (113041, DCM, \"Apparent Diffusion Coefficient\") (373098007, SCT, \"Mean\")" in out


def test_broken_site_template_names_the_entry_and_fails(run, tmp_path):
    d = tmp_path / "tpl"
    shutil.copytree(default_dir(), d)
    p = d / MEASUREMENTS_FILE
    p.write_text(p.read_text(encoding="utf-8").replace('value = "mL", meaning = "Milliliter"',
                                                       'value = "L", meaning = "Liter"'), encoding="utf-8")
    rc, out, _ = run("template", str(d))
    assert rc == 1
    assert "(formula 'size.volume'): unit 'L' is neither the formula's unit 'mL'" in out
