"""The Orthanc routing plugin, loaded by a real Orthanc with orthanc-python."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from conftest import ORTHANC_PYTHON_PLUGIN, ROOT, Orthanc, in_ci, need, wait_until
from dicomgen import ct_series

pytestmark = pytest.mark.network


def test_stable_liver_study_is_routed_to_the_node_and_others_are_not(node_factory, tmp_path):
    need("Orthanc")
    if not ORTHANC_PYTHON_PLUGIN.exists():
        msg = "orthanc-python is not installed (make test installs it)"
        pytest.fail(msg) if in_ci() else pytest.skip(msg)
    node = node_factory().start()
    d = tmp_path / "orthanc"
    d.mkdir()
    orthanc = Orthanc(d, {
        "Plugins": [str(ORTHANC_PYTHON_PLUGIN)],
        "PythonScript": str(ROOT / "plugins" / "orthanc" / "hccnode_route.py"),
        "StableAge": 1,
        "DicomModalities": {"hccnode": ["HCCNODE", "127.0.0.1", node.port],
                            "sender": ["STORESCU", "127.0.0.1", 104]},
        "HccNode": {"Modality": "hccnode"},
    }).start()
    try:
        liver = ct_series(tmp_path / "liver", n=4, seed=1, description="CT ABDOMEN LIVER 3 PHASE")
        knee = ct_series(tmp_path / "knee", n=3, seed=2, description="KNEE RIGHT", body_part="KNEE")
        for files in (liver, knee):
            r = subprocess.run([need("storescu"), "-aet", "STORESCU", "-aec", "ORTHANC", "127.0.0.1",
                                str(orthanc.dicom_port), *map(str, files)], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        store = node.store()
        wait_until(lambda: store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 4, 60,
                   what="the liver study routed to the node")
        liver_study = str(pydicom.dcmread(liver[0]).StudyInstanceUID)
        knee_study = str(pydicom.dcmread(knee[0]).StudyInstanceUID)
        wait_until(lambda: "does not match the routing rules" in orthanc.log_path.read_text(), 30,
                   what="the knee study to be judged")
        studies = {r["study_uid"] for r in store.query("SELECT study_uid FROM studies")}
        assert studies == {liver_study} and knee_study not in studies
        assert "calling_ae=ORTHANC" in node.log()
    finally:
        orthanc.stop()
