"""Put a generated phantom study into a Store through the node's ingest (Spool) and compare phases."""

from __future__ import annotations

import random
from pathlib import Path

from hccnode.store.db import Store
from hccnode.store.spool import Spool, ingest_file

# truth.json kind -> the kind hccnode.imaging.phases reports
TRUTH_KIND = {"ct_portal": "ct_portal_venous"}
TRUTH_PHASE = {"portal": "portal_venous"}


def index_files(store: Store, root: Path, shuffle_seed: int | None = None) -> set[str]:
    """Ingest every DICOM file under `root` as if received by C-STORE (in a shuffled order when
    `shuffle_seed` is given); returns the study UIDs."""
    spool = Spool(store)
    studies = set()
    paths = sorted(root.rglob("*.dcm"))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(paths)
    for path in paths:
        result = ingest_file(spool, path, calling_ae="PHANTOM")
        assert result.outcome in ("stored", "duplicate"), result
        studies.add(result.study_uid)
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
