"""The Orthanc routing plugin, loaded by a real Orthanc with orthanc-python."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pydicom
import pytest

from conftest import ORTHANC_PYTHON_PLUGIN, ROOT, Orthanc, in_ci, need, wait_until
from dicomgen import ct_series
from node_support import WATCHER_HELD, release_watcher

pytestmark = pytest.mark.network


def routing_orthanc(tmp_path, node) -> Orthanc:
    """A real Orthanc (not started) loading the routing plugin, knowing the node and a sender."""
    need("Orthanc")
    if not ORTHANC_PYTHON_PLUGIN.exists():
        msg = "orthanc-python is not installed (make test installs it)"
        pytest.fail(msg) if in_ci() else pytest.skip(msg)
    d = tmp_path / "orthanc"
    d.mkdir()
    return Orthanc(d, {
        "Plugins": [str(ORTHANC_PYTHON_PLUGIN)],
        "PythonScript": str(ROOT / "plugins" / "orthanc" / "hccnode_route.py"),
        "StableAge": 1,
        "DicomModalities": {"hccnode": ["HCCNODE", "127.0.0.1", node.port],
                            "sender": ["STORESCU", "127.0.0.1", 104]},
        "HccNode": {"Modality": "hccnode"},
    })


def test_stable_liver_study_is_routed_to_the_node_and_others_are_not(node_factory, tmp_path):
    node = node_factory().start()
    orthanc = routing_orthanc(tmp_path, node).start()
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


def test_study_stored_in_orthanc_is_analysed_and_its_sr_comes_back_once(node_factory, tmp_path):
    """Issue 9 deploy: a phantom CECT study stored into Orthanc is routed by the plugin, analysed by
    the node, and the node's SRs (ROI SR and results SR) land in the same study in Orthanc. The results arriving make the
    study stable again; its images are not routed a second time, so it is analysed once."""
    from hccnode.phantom import StudySpec, generate

    truth = generate(StudySpec(kind="cect", seed=31, slices=8, matrix=64, noise_sd=2.0, progress=False),
                     tmp_path / "phantom")
    study_uid = truth.data["studies"][0]["study_instance_uid"]
    node = node_factory(study=WATCHER_HELD)
    orthanc = routing_orthanc(tmp_path, node)
    try:
        orthanc.start()
        node.configure(forward={"destinations": [orthanc.destination]}).start()
        files = sorted(str(p) for p in (tmp_path / "phantom").rglob("*.dcm"))
        r = subprocess.run([need("storescu"), "-R", "-aet", "STORESCU", "-aec", "ORTHANC", "127.0.0.1",
                            str(orthanc.dicom_port), *files], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        # The routing job ended: the study is whole in the node's index, then it becomes one job.
        routed = re.compile(r"hccnode: study \S+, \d+ series sent to \S+ \(job (\S+)\)")
        job_id = wait_until(lambda: (m := routed.search(orthanc.log_path.read_text())) and m.group(1), 150,
                            interval=0.5, what="the study routed to the node")
        wait_until(lambda: orthanc.get(f"/jobs/{job_id}")["State"] == "Success", 150, interval=0.5,
                   what="the routing job to end")
        store = node.store()
        release_watcher(node)

        def srs():
            found = orthanc.post("/tools/lookup", study_uid)
            sid = next((x["ID"] for x in found if x["Type"] == "Study"), None)
            if sid is None:
                return []
            return [i for i in orthanc.get(f"/studies/{sid}/instances")
                    if orthanc.get(f"/instances/{i['ID']}/tags?simplify")["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.88.34"]

        wait_until(lambda: len(srs()) == 2, 150, interval=0.5, what="the node's two SRs back in Orthanc")
        wait_until(lambda: "not sent again" in orthanc.log_path.read_text(), 30,
                   what="the study, stable again with the results, to be judged")
        assert [j["study_uid"] for j in store.query("SELECT study_uid FROM jobs")] == [study_uid]
        assert len(srs()) == 2        # the ROI SR and its results SR (hccnode.report.sr), each once
    finally:
        orthanc.stop()
