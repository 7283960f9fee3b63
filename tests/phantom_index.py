"""Put a generated phantom study into a Store's index (as the ingest would) and compare phases."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pydicom

from hccnode.store.db import Store

# truth.json kind -> the kind hccnode.imaging.phases reports
TRUTH_KIND = {"ct_portal": "ct_portal_venous"}
TRUTH_PHASE = {"portal": "portal_venous"}


def index_files(store: Store, root: Path) -> set[str]:
    """Index every DICOM file under `root` (copied in place: paths relative to the data dir)."""
    studies = set()
    now = time.time()
    with store.tx() as c:
        for path in sorted(root.rglob("*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rel = str(path.relative_to(store.data_dir))
            c.execute("INSERT OR IGNORE INTO studies (study_uid, first_received, last_received) VALUES (?,?,?)",
                      (ds.StudyInstanceUID, now, now))
            c.execute("INSERT OR IGNORE INTO series (series_uid, study_uid, modality, series_number, series_description,"
                      " first_received, last_received) VALUES (?,?,?,?,?,?,?)",
                      (ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.get("Modality"), ds.get("SeriesNumber"),
                       ds.get("SeriesDescription"), now, now))
            c.execute("INSERT OR REPLACE INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, transfer_syntax,"
                      " path, size, sha256, received_at, instance_number) VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SOPClassUID,
                       ds.file_meta.TransferSyntaxUID, rel, path.stat().st_size,
                       hashlib.sha256(path.read_bytes()).hexdigest(), now, ds.get("InstanceNumber")))
            studies.add(ds.StudyInstanceUID)
    return studies


def expected(truth: dict) -> dict[str, dict]:
    """series UID -> {"kind", "phase", "kev", "b_values"} from truth.json."""
    out = {}
    for study in truth["studies"]:
        for s in study["series"]:
            out[s["series_instance_uid"]] = {
                "kind": TRUTH_KIND.get(s["kind"], s["kind"]),
                "phase": TRUTH_PHASE.get(s.get("phase"), s.get("phase")),
                "kev": s.get("kev"), "description": s.get("description")}
    return out
