"""The viewer stack on loopback: Orthanc (DICOMweb plugin at /dicom-web/, OHIF at /ohif/ through
ServeFolders), a node forwarding its results to that Orthanc, and a phantom CECT study (reader's
tumour SEG, a hematocrit) sent to the node, whose results are awaited in Orthanc.

    with Stack(workdir, dist) as stack:          # starts Orthanc and the node
        study = stack.send_phantom()             # writes, imports the hematocrit, sends; waits
        print(stack.study_url(study.study_uid))  # the study in OHIF

Everything listens on 127.0.0.1 on free ports; leaving the block stops both processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pydicom

from hccnode.config import Destination
from hccnode.net import scu
from hccnode.phantom import StudySpec, generate
from hccnode.viewer import install

PLUGIN_DIR = Path("/usr/share/orthanc/plugins")
PLUGINS = ("libOrthancPython.so", "libOrthancDicomWeb.so", "libServeFolders.so")
ROUTES_SCRIPT = Path(__file__).with_name("orthanc_routes.py")

# What the node sends back for a CECT study, by SOP Class UID.
OUTPUT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.34": "sr",     # Comprehensive 3D SR (TID 1500)
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",     # Segmentation
    "1.2.840.10008.5.1.4.1.1.30": "pmap",      # Parametric Map (ECV)
    "1.2.840.10008.5.1.4.1.1.104.1": "pdf",    # Encapsulated PDF (summary)
}
PHANTOM_ISSUER = "HCCNODE-PHANTOM"
SCANNER_AET = "VIEWERDEMO"      # storescu sending the phantom, as the scanner would: to the PACS and the node
SETTLE_SECONDS = 3.0
HEMATOCRIT_PERCENT = 40.0       # the phantom's own (StudySpec.hct = 0.4), drawn two hours before the scan


class StackError(Exception):
    """A part of the viewer stack is missing or did not come up (the message says which)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise StackError(f"{what}: the process exited ({proc.returncode}). Log tail:\n{tail}")
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def _toml(cfg: dict) -> str:
    return "".join(f"[{s}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in vals.items()) for s, vals in cfg.items())


@dataclass
class SentStudy:
    """The phantom study sent to the node: its UID, its folder (truth.json inside) and the
    node's results found in Orthanc ({"sr"|"seg"|"pmap"|"pdf": SOP Instance UID}; a second
    SR document is "sr2", and so on)."""
    study_uid: str
    folder: Path
    results: dict[str, str] = field(default_factory=dict)


class Stack:
    """Orthanc with DICOMweb + OHIF, and an `hccnode serve` forwarding to it, under `workdir`."""

    def __init__(self, workdir: Path, dist: Path, http_port: int = 0):
        self.workdir = Path(workdir)
        self.dist = Path(dist).resolve()
        self.http_port = http_port or free_port()
        self.dicom_port = free_port()
        self.node_port = free_port()
        self.procs: list[subprocess.Popen] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        missing = [str(PLUGIN_DIR / p) for p in PLUGINS if not (PLUGIN_DIR / p).is_file()]
        missing += [t for t in ("Orthanc", "storescu") if not shutil.which(t)]
        if not (self.dist / "index.html").is_file():
            missing.append(f"OHIF in {self.dist} (make viewer-deps)")
        if missing:
            raise StackError("missing: " + ", ".join(missing) + " (make viewer-deps installs them)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_orthanc()
        self._start_node()

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)
        self.procs.clear()

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        self.procs.append(p)
        return p

    def _start_orthanc(self) -> None:
        storage = self.workdir / "orthanc-storage"
        cfg = {
            "Name": "hccnode-viewer",
            "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            # Orthanc 1.10 cannot bind to one interface: HTTP refuses remote clients, and DICOM
            # stores come only from the node, registered at 127.0.0.1.
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True,
            "DicomModalities": {"hccnode": ["HCCNODE", "127.0.0.1", self.node_port],
                                "scanner": [SCANNER_AET, "127.0.0.1", 104]},
            "Plugins": [str(PLUGIN_DIR / p) for p in PLUGINS],
            "PythonScript": str(ROUTES_SCRIPT),
            # No "Host": with one, the plugin writes absolute BulkDataURIs OHIF cannot follow.
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "ServeFolders": {"Folders": {"/ohif": str(self.dist)},
                             "Extensions": {".wasm": "application/wasm", ".ico": "image/x-icon",
                                            ".woff2": "font/woff2", ".map": "application/json"}},
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(cfg, indent=1))
        log = self.workdir / "orthanc.log"
        proc = self._spawn([shutil.which("Orthanc"), str(path)], log)
        _wait(lambda: self._http_ok("/dicom-web/studies") and self._http_ok("/ohif/app-config.js"), 60,
              "Orthanc with DICOMweb and OHIF", proc, log)

    def _start_node(self) -> None:
        data = self.workdir / "node-data"
        cfg = {
            "node": {"ae_title": "HCCNODE", "host": "127.0.0.1", "port": self.node_port, "data_dir": str(data)},
            "study": {"stable_seconds": 3.0},
            "worker": {"processes": 1, "poll_seconds": 0.5},
            "forward": {"destinations": [f"ORTHANC@127.0.0.1:{self.dicom_port}"], "poll_seconds": 0.5,
                        "retry_base_seconds": 1.0, "retry_max_seconds": 5.0},
            "hl7": {"enabled": False},
            "status": {"port": free_port()},
        }
        self.node_config = self.workdir / "hccnode.toml"
        self.node_config.write_text(_toml(cfg))
        log = self.workdir / "node.log"
        proc = self._spawn([sys.executable, "-m", "hccnode", "-c", str(self.node_config), "serve"], log)
        quiet = logging.getLogger("pynetdicom")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)        # refused probes while the node starts are expected
        try:
            _wait(self._node_answers, 60, "the node to answer C-ECHO", proc, log)
        finally:
            quiet.setLevel(level)

    def _node_answers(self) -> bool:
        # A C-ECHO, not a bare TCP probe: pynetdicom would hold a silent connection as an association.
        try:
            return scu.echo(Destination("HCCNODE", "127.0.0.1", self.node_port), "VIEWERPROBE", timeout=2) == 0
        except (scu.AssociationFailed, OSError):
            return False

    # -- HTTP --------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def study_url(self, study_uid: str) -> str:
        return f"{self.base_url}/ohif/viewer?StudyInstanceUIDs={study_uid}"

    def get_json(self, path: str):
        with urllib.request.urlopen(self.base_url + path, timeout=20) as r:
            body = r.read()
        return json.loads(body) if body else []

    def _orthanc_id(self, sop_uid: str) -> str:
        req = urllib.request.Request(self.base_url + "/tools/lookup", data=sop_uid.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.loads(r.read())[0]["ID"]

    def instance_file(self, sop_uid: str) -> Path:
        """The instance as Orthanc holds it, written under the work directory."""
        path = self.workdir / "orthanc-files" / f"{sop_uid}.dcm"
        path.parent.mkdir(exist_ok=True)
        with urllib.request.urlopen(f"{self.base_url}/instances/{self._orthanc_id(sop_uid)}/file", timeout=60) as r:
            path.write_bytes(r.read())
        return path

    def series_of(self, sop_uid: str) -> str:
        return self.get_json(f"/instances/{self._orthanc_id(sop_uid)}/simplified-tags")["SeriesInstanceUID"]

    def versions(self) -> dict[str, str]:
        """Orthanc's version and each loaded plugin's, as Orthanc reports them."""
        out = {"orthanc": self.get_json("/system")["Version"]}
        for name in (n for n in self.get_json("/plugins") if n != "explorer.js"):
            out[name] = self.get_json(f"/plugins/{name}").get("Version", "")
        return out

    def ohif_version(self) -> str:
        mark = self.dist / install.INSTALLED_MARK
        return mark.read_text().split()[0] if mark.exists() else "unknown"

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    # -- the study -----------------------------------------------------------------------------
    def send_phantom(self, timeout: float = 600) -> SentStudy:
        """A phantom CECT study (16 slices of 96², a reader's SEG on the equilibrium phase), its
        hematocrit imported into the node, the study sent by storescu to Orthanc (the PACS holds
        the images) and to the node; returns once the node's four results are in Orthanc."""
        folder = self.workdir / "phantom"
        shutil.rmtree(folder, ignore_errors=True)
        truth = generate(StudySpec(kind="cect", seg_phase="equilibrium", progress=False), folder)
        self._import_hematocrit(truth)
        files = sorted(str(p) for p in folder.rglob("*.dcm"))
        for aec, port in (("ORTHANC", self.dicom_port), ("HCCNODE", self.node_port)):
            r = subprocess.run([shutil.which("storescu"), "-R", "-aet", SCANNER_AET, "-aec", aec, "127.0.0.1",
                                str(port), *files], capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise StackError(f"storescu could not send the phantom study to {aec}: {r.stderr.strip()[-500:]}")
        study = SentStudy(truth.data["studies"][0]["study_instance_uid"], folder)
        sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        study.results = _wait(lambda: self._results(study.study_uid, sent), timeout,
                              "the node's SR, SEG, Parametric Map and PDF in Orthanc", self.procs[-1],
                              self.workdir / "node.log")
        # the node may send more than one object of a kind (a second SR): wait until the set
        # stays the same for SETTLE_SECONDS
        for _ in range(int(timeout / SETTLE_SECONDS)):
            time.sleep(SETTLE_SECONDS)
            now = self._results(study.study_uid, sent) or study.results
            if now == study.results:
                break
            study.results = now
        return study

    def _import_hematocrit(self, truth) -> None:
        start = datetime.fromisoformat(truth.data["studies"][0]["series"][0]["acquisition_start"])
        drawn = (start - timedelta(hours=2)).isoformat(timespec="minutes")
        csv = self.workdir / "hematocrit.csv"
        csv.write_text("patient_id,issuer,test,value,unit,time\n"
                       f"{truth.data['patient']['id']},{PHANTOM_ISSUER},4544-3,{HEMATOCRIT_PERCENT:g},%,{drawn}\n")
        r = subprocess.run([sys.executable, "-m", "hccnode", "-c", str(self.node_config), "labs", "import", str(csv)],
                           capture_output=True, text=True, timeout=120, cwd=self.workdir)
        if r.returncode != 0:
            raise StackError(f"the hematocrit could not be imported: {r.stderr.strip()[-500:]}")

    def _results(self, study_uid: str, sent: set[str]) -> dict[str, str] | None:
        """The node's four results in Orthanc (by QIDO-RS; instances not in `sent`, the study as
        the scanner sent it, which has a reader's SEG), or None while any is missing."""
        try:
            found = self.get_json(f"/dicom-web/studies/{study_uid}/instances")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        out = {}
        for inst in found:
            kind = OUTPUT_CLASSES.get(inst.get("00080016", {}).get("Value", [""])[0])
            if kind and inst["00080018"]["Value"][0] not in sent:
                n = sum(k.rstrip("0123456789") == kind for k in out)
                out[kind + (str(n + 1) if n else "")] = inst["00080018"]["Value"][0]
        return out if set(OUTPUT_CLASSES.values()) <= set(out) else None
