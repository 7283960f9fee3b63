"""Issue 8 end to end on real parts: a phantom CECT study sent by dcmtk storescu to a running
node, the hematocrit sent over MLLP, the node's outputs forwarded to a real Orthanc."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from datetime import datetime, timedelta

import pydicom
import pytest
from conftest import free_port, need, wait_until
from labs_support import ack_fields, exchange, obx, oru
from pipeline_support import ISSUER, scratch_dir
from report_support import dciodvfy

from hccnode.labs.mllp import frame
from hccnode.phantom import StudySpec, generate

pytestmark = pytest.mark.network

OUTPUT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",
    "1.2.840.10008.5.1.4.1.1.30": "pm",
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",
    "1.2.840.10008.5.1.4.1.1.104.1": "pdf",
}


def _walk(items):
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _orthanc_files(orthanc, dest):
    """Every instance in Orthanc, downloaded: {kind: path}."""
    out = {}
    for iid in orthanc.get("/instances"):
        with urllib.request.urlopen(f"http://127.0.0.1:{orthanc.http_port}/instances/{iid}/file", timeout=10) as r:
            data = r.read()
        path = dest / f"{iid}.dcm"
        path.write_bytes(data)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out[OUTPUT_CLASSES.get(str(ds.SOPClassUID), str(ds.SOPClassUID))] = path
    return out


def test_study_in_outputs_in_orthanc(node_factory, orthanc, tmp_path):
    storescu, dsrdump = need("storescu"), need("dsrdump")
    root = scratch_dir("e2e")
    try:
        truth = generate(StudySpec(kind="cect", seed=21, slices=10, matrix=64, noise_sd=2.0,
                                   seg_phase="equilibrium"), root / "phantom")
        pat = truth.data["patient"]
        hl7_port = free_port()
        node = node_factory(hl7={"enabled": True, "port": hl7_port},
                            forward={"destinations": [orthanc.destination]}).start()

        # the hematocrit two hours before the scan, over a real MLLP socket
        drawn = datetime.fromisoformat(truth.data["studies"][0]["series"][0]["acquisition_start"]) - timedelta(hours=2)
        msg = oru(obx(1, "4544-3", "40", "%", time=drawn.strftime("%Y%m%d%H%M")), control="E2EHCT1",
                  pid=f"PID|1||{pat['id']}^^^{ISSUER}^MR||{pat['name']}")
        (ack,) = exchange(hl7_port, frame(msg))
        assert ack_fields(ack)["code"] == "AA"

        files = sorted(str(p) for p in (root / "phantom").rglob("*.dcm"))
        sent = subprocess.run([storescu, "-R", "-aec", "HCCNODE", "127.0.0.1", str(node.port), *files],
                              capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr

        wait_until(lambda: len(orthanc.get("/instances")) >= 4, 150, interval=0.5, what="outputs in Orthanc")
        got = _orthanc_files(orthanc, tmp_path)
        assert set(got) == {"seg", "pm", "sr", "pdf"}
        for kind, path in got.items():
            errors, _ = dciodvfy(path)
            assert errors == [], (kind, errors)
        dump = subprocess.run([dsrdump, str(got["sr"])], capture_output=True, text=True, timeout=60)
        assert dump.returncode == 0 and "Imaging Measurement Report" in dump.stdout

        # SR values against the phantom's truth (issue 5: 0.5 pp with aligned phases)
        sr = pydicom.dcmread(got["sr"])
        ecv = [float(i.MeasuredValueSequence[0].NumericValue) for i in _walk(sr.ContentSequence)
               if i.get("ValueType") == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "ECV"
               and i.get("MeasuredValueSequence")]
        for role in ("tumor", "liver"):
            want = 100 * truth.roi(role)["ecv"]
            assert any(abs(v - want) <= 0.5 for v in ecv), (role, ecv)
        study = truth.data["studies"][0]["study_instance_uid"]
        assert sr.StudyInstanceUID == study

        # re-running the same analysis sends the same objects again: no duplicate in Orthanc
        before = orthanc.sop_uids()
        again = node.cli("analyze", study, "--no-progress", timeout=300)
        assert again.returncode == 0, again.stderr
        store = node.store()
        wait_until(lambda: not store.query("SELECT 1 FROM outbox WHERE state IN ('pending', 'sending')"), 60,
                   what="re-sent outputs")
        assert store.query("SELECT COUNT(*) AS n FROM outbox WHERE state = 'sent'")[0]["n"] == 8
        assert orthanc.sop_uids() == before and len(orthanc.get("/instances")) == 4

        node.stop()
        log = node.log()
        assert "pipeline.done" in log
        assert pat["id"] not in log and pat["name"] not in log
    finally:
        shutil.rmtree(root, ignore_errors=True)
