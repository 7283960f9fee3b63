"""Priors over real parts: a real Orthanc holding the baseline MR study, a real node holding the
follow-up; `hccnode priors` / fetch_baseline retrieve the baseline into the node's store."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

import pydicom
import pytest

from conftest import Orthanc, free_port, need
from hccnode import config
from hccnode.net.priors import fetch_baseline
from hccnode.phantom import StudySpec, generate
from hccnode.store import audit

pytestmark = pytest.mark.network


def phantom(out: Path, seed: int = 1, weeks: int = 8) -> dict:
    """A tiny MR baseline + follow-up pair: {"baseline"|"followup": (study UID, files)}, patient."""
    truth = generate(StudySpec(kind="mr", seed=seed, slices=2, matrix=16, followup_weeks=weeks, progress=False), out)
    pair = {}
    for s in truth.data["studies"]:
        pair[s["label"]] = (s["study_instance_uid"], sorted((out / s["label"]).rglob("*.dcm")))
    pair["patient"] = truth.data["patient"]
    return pair


def sops(files) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def upload(orthanc: Orthanc, files) -> None:
    """Put files into Orthanc over its REST API (loopback), as a PACS already holding them."""
    for f in files:
        req = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/instances", data=f.read_bytes(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read())["Status"] in ("Success", "AlreadyStored")


def send_to_node(node, files) -> None:
    r = subprocess.run([need("storescu"), "-aet", "SCANNER", "-aec", node_ae(node), "127.0.0.1", str(node.port),
                        *map(str, files)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def ingest(node, files) -> None:
    """Keep files in a stopped node's store through its spool, as its SCP would (no priors test needs
    the listener when nothing is retrieved, and each node start costs seconds)."""
    from hccnode.store.db import Store
    from hccnode.store.spool import Spool, ingest_file
    spool = Spool(Store(node.data_dir if hasattr(node, "data_dir") else node))
    for f in files:
        r = ingest_file(spool, f, "SCANNER")
        assert r.outcome == "stored", r.comment


def node_ae(node) -> str:
    return config.load(node.config_path).node.ae_title


def add_priors(node, **values) -> None:
    """Append a [priors] section to the node's configuration file."""
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    node.config_path.write_text(node.config_path.read_text() + "[priors]\n" + lines)


def pacs_for(node, tmp_path, known_ae: str = "HCCNODE") -> Orthanc:
    """A real Orthanc that knows `known_ae` at the node's port (the node's calling AE when querying
    is forward.ae_title, HCCNODE): DicomModalities is what lets Orthanc C-MOVE to the node."""
    need("Orthanc")
    d = tmp_path / "orthanc"
    d.mkdir()
    return Orthanc(d, {"DicomModalities": {"hccnode": [known_ae, "127.0.0.1", node.port]}}).start()


def audit_events(store, study_uid: str) -> list[dict]:
    return [r for r in audit.rows(store, study_uid=study_uid) if r["event"].startswith("prior.")]


def assert_no_phi(text: str, patient: dict) -> None:
    for value in (patient["id"], patient["name"], patient["name"].split("^")[-1], patient["birth_date"]):
        assert value not in text


def test_priors_cli_moves_the_baseline_into_the_store(node_factory, tmp_path):
    pair = phantom(tmp_path / "ph")
    (base_uid, base_files), (fu_uid, fu_files) = pair["baseline"], pair["followup"]
    node = node_factory()
    orthanc = pacs_for(node, tmp_path)
    try:
        add_priors(node, pacs=orthanc.destination, retrieve="move")
        node.start()
        upload(orthanc, base_files + fu_files)       # the PACS has both; the node only the follow-up
        send_to_node(node, fu_files)

        r = node.cli("priors", fu_uid)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"fetched: baseline {base_uid}: {len(base_files)} instances retrieved by C-MOVE to HCCNODE" in r.stdout
        assert "+ chosen: 56 days before the follow-up: within paper 003's 56-70 days" in r.stdout
        assert "- the follow-up itself" in r.stdout

        store = node.store()
        rows = store.query("SELECT sop_uid, path, calling_ae FROM instances WHERE study_uid = ?", (base_uid,))
        assert {row["sop_uid"] for row in rows} == sops(base_files)
        assert all((node.data_dir / row["path"]).is_file() and row["calling_ae"] == "ORTHANC" for row in rows)
        events = audit_events(store, fu_uid)
        assert [e["event"] for e in events] == ["prior.queried", "prior.retrieved"]
        queried = json.loads(events[0]["details"])
        assert queried["chosen"] == base_uid and len(queried["candidates"]) == 2
        assert json.loads(events[1]["details"])["indexed"] == len(base_files)
        stored = [e for e in audit.rows(store, study_uid=base_uid) if e["event"] == "instance.stored"]
        assert len(stored) == len(base_files) and {e["actor"] for e in stored} == {"AE:ORTHANC"}

        again = fetch_baseline(config.load(node.config_path), store, fu_uid, even_if_disabled=True)
        assert again.state == "present" and again.indexed == len(base_files)   # nothing retrieved twice
        for text in (node.log(), r.stdout, r.stderr, json.dumps(list(audit.rows(store)))):
            assert_no_phi(text, pair["patient"])
    finally:
        orthanc.stop()


def test_fetch_baseline_falls_back_to_cget_when_the_pacs_cannot_move_to_the_node(node_factory, tmp_path):
    pair = phantom(tmp_path / "ph", seed=3)
    (base_uid, base_files), (fu_uid, fu_files) = pair["baseline"], pair["followup"]
    # The node listens as HCCNODE2, which the PACS does not know: C-MOVE to it must fail.
    node = node_factory(node={"ae_title": "HCCNODE2"})
    orthanc = pacs_for(node, tmp_path)
    try:
        add_priors(node, pacs=orthanc.destination, retrieve="move")
        node.start()
        upload(orthanc, base_files)
        send_to_node(node, fu_files)

        cfg = config.load(node.config_path)
        store = node.store()
        moved = fetch_baseline(cfg, store, fu_uid, even_if_disabled=True)
        assert moved.state == "failed" and moved.method == "move"
        assert moved.message.startswith(f"C-MOVE to HCCNODE2 of baseline {base_uid}: status 0x")
        assert "the PACS must know this node's AE title 'HCCNODE2'" in moved.message

        cfg.priors.retrieve = "auto"
        result = fetch_baseline(cfg, store, fu_uid, even_if_disabled=True)
        assert result.state == "fetched" and result.method == "get", result.message
        assert result.baseline_uid == base_uid and result.indexed == len(base_files)
        indexed = {row["sop_uid"] for row in store.query("SELECT sop_uid FROM instances WHERE study_uid = ?",
                                                         (base_uid,))}
        assert indexed == sops(base_files)
        assert [e["event"] for e in audit_events(store, fu_uid)] == [
            "prior.queried", "prior.failed", "prior.queried", "prior.retrieved"]
    finally:
        orthanc.stop()


def test_no_baseline_in_the_window_is_a_clear_result(node_factory, tmp_path):
    pair = phantom(tmp_path / "ph", seed=5, weeks=4)    # the earlier MR is 28 days before: too recent
    (base_uid, base_files), (fu_uid, fu_files) = pair["baseline"], pair["followup"]
    node = node_factory()
    orthanc = pacs_for(node, tmp_path)
    try:
        add_priors(node, pacs=orthanc.destination)
        upload(orthanc, base_files)
        ingest(node, fu_files)
        r = node.cli("priors", fu_uid)
        assert r.returncode == 1
        assert "no_baseline: no MR study of this patient 49-77 days before the follow-up" in r.stderr
        assert f"{base_uid}  2026-" in r.stdout and "28 days before the follow-up: fewer than the window's 49" in r.stdout
        store = node.store()
        assert store.query("SELECT COUNT(*) AS n FROM instances WHERE study_uid = ?", (base_uid,))[0]["n"] == 0
        events = audit_events(store, fu_uid)
        assert [e["event"] for e in events] == ["prior.queried"] and json.loads(events[0]["details"])["chosen"] is None
        disabled = fetch_baseline(config.load(node.config_path), store, fu_uid)   # [priors] enabled = false
        assert disabled.state == "skipped" and "disabled" in disabled.message
    finally:
        orthanc.stop()


def test_pacs_down_is_a_clear_error_not_a_trace(node_factory, tmp_path):
    pair = phantom(tmp_path / "ph", seed=7)
    fu_uid, fu_files = pair["followup"]
    node = node_factory()
    add_priors(node, pacs=f"ORTHANC@127.0.0.1:{free_port()}", timeout=5.0)   # nobody listens there
    ingest(node, fu_files)
    r = node.cli("priors", fu_uid)
    assert r.returncode == 1
    assert "failed: cannot query the PACS: ORTHANC@127.0.0.1" in r.stderr and "connection refused" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    events = audit_events(node.store(), fu_uid)
    assert [e["event"] for e in events] == ["prior.failed"]
    assert json.loads(events[0]["details"])["step"] == "query"
    assert_no_phi(r.stderr + r.stdout, pair["patient"])

    unknown = fetch_baseline(config.load(node.config_path), node.store(), "1.2.3.4.5", even_if_disabled=True)
    assert unknown.state == "skipped" and "is not in the node's store" in unknown.message


def test_a_study_that_cannot_be_paired_is_skipped_without_asking_the_pacs(tmp_path):
    from dicomgen import ct_series
    from hccnode.store.db import Store

    ingest(tmp_path / "data", ct_series(tmp_path / "ct", n=2))
    store = Store(tmp_path / "data")
    ct_uid = store.query("SELECT study_uid FROM studies")[0]["study_uid"]
    cfg = config.from_dict({"node": {"data_dir": str(tmp_path / "data")},
                            "priors": {"pacs": f"ORTHANC@127.0.0.1:{free_port()}"}})
    result = fetch_baseline(cfg, store, ct_uid, even_if_disabled=True)
    assert result.state == "skipped" and "has no MR series (modalities: CT)" in result.message
    assert not [r for r in audit.rows(store) if r["event"].startswith("prior.")]   # the PACS was not asked
