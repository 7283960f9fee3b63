"""Installable as a wheel: a built (not editable) install carries the model cards, SR templates and
rules it reads, so `hccnode models check` and an analysis run from it.

The wheel is built from a copy of the source tree with the running environment's setuptools (no
download). It is installed into a new venv that sees this environment's packages through a .pth
file, so the dependencies are resolved (pip --no-index: none is missing) without installing them
again. Cost: about 15 s (build 1.5 s, install 2.5 s, models check 1.3 s, phantom 1 s, analysis 8 s).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[1]
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def run(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_wheel_installed_in_a_fresh_venv_checks_the_models_and_analyses_a_study(tmp_path):
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    for name in ("hccnode", "sr_templates", "plugins/models"):
        shutil.copytree(ROOT / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HCCNODE_CONFIG")}

    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", tmp_path / "dist", f"{src}/"], tmp_path, env)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("hccnode-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
    Path(purelib.stdout.strip(), "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index", wheel], tmp_path, env)
    assert installed.returncode == 0, installed.stderr

    work = tmp_path / "work"
    work.mkdir()
    where = run([python, "-c", "import hccnode; print(hccnode.__file__)"], work, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's copy, not this tree
    hccnode = venv / "bin" / "hccnode"

    checked = run([hccnode, "models", "check"], work, env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for card in sorted((ROOT / "plugins" / "models").glob("*.toml")):
        data = tomllib.loads(card.read_text(encoding="utf-8"))
        assert f"{data['id']}@{data['version']}" in checked.stdout, card.name

    template = run([hccnode, "report", "template"], work, env)
    assert template.returncode == 0, template.stdout + template.stderr
    assert str(venv) in template.stdout  # read from the installed package data

    phantom = run([hccnode, "phantom", "--no-progress", "--slices", "12", "--matrix", "96", work / "study"], work, env)
    assert phantom.returncode == 0, phantom.stderr
    analysed = run([hccnode, "analyze", "--no-progress", "--no-forward", "--dicom-dir", work / "study",
                    "--out", work / "out"], work, env)
    assert analysed.returncode == 0, analysed.stdout + analysed.stderr
    assert "measured" in analysed.stdout
    sr = pydicom.dcmread(work / "out" / "sr.dcm")
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
