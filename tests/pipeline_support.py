"""Phantom studies in a node store for the pipeline tests, and lab results for their patient."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from phantom_index import index_files

from hccnode.labs.csvimport import import_csv
from hccnode.phantom import StudySpec, generate
from hccnode.store.db import Store

SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
ISSUER = "HCCNODE-PHANTOM"


def scratch_dir(prefix: str) -> Path:
    """A RAM-backed directory when there is one (fsyncs of the ingest are not under test)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


def phantom_store(root: Path, spec: StudySpec, drop: dict[str, int] | None = None, url: str = ""):
    """Generate `spec` under root/phantom and store it in a node store at root/data (database: `url`,
    empty for SQLite) through the spool. `drop` = {truth series kind: slice index} removes that file
    first (a missing slice). Returns (store, truth, study UIDs in truth order)."""
    truth = generate(spec, root / "phantom")
    for kind, k in (drop or {}).items():
        s = truth.series(kind)[0]
        sorted((root / "phantom" / s["folder"]).glob("*.dcm"))[k].unlink()
    store = Store(root / "data", url=url)
    index_files(store, root / "phantom")
    return store, truth, [s["study_instance_uid"] for s in truth.data["studies"]]


def add_labs(store: Store, truth, rows: list[tuple[str, float, str, float]], name: str = "labs.csv") -> None:
    """Import lab results for the phantom patient: (test, value, unit, hours relative to the
    first series' acquisition start, negative = before)."""
    start = datetime.fromisoformat(truth.data["studies"][0]["series"][0]["acquisition_start"])
    lines = ["patient_id,issuer,test,value,unit,time"]
    for test, value, unit, hours in rows:
        t = (start + timedelta(hours=hours)).isoformat(timespec="minutes")
        lines.append(f"{truth.data['patient']['id']},{ISSUER},{test},{value:g},{unit},{t}")
    path = store.data_dir / name
    path.write_text("\n".join(lines) + "\n")
    import_csv(store, path)


def by_marker(analysis, marker: str, role: str | None = None):
    found = [m for m in analysis.measurements if m.marker == marker and (role is None or m.roi.name == role)]
    assert found, f"no {marker} in {[m.marker for m in analysis.measurements]}"
    return found[0]
