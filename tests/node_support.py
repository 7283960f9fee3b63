"""Helpers for tests against a running node: dcmtk clients, their per-file answers, the
spool's contents, and a size-limited filesystem."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest

from conftest import in_ci, need


def storescu(node, files, aet="STORESCU", extra=(), timeout=120, port=None) -> subprocess.CompletedProcess:
    return subprocess.run([need("storescu"), "-v", "-aet", aet, "-aec", "HCCNODE", *extra, "127.0.0.1",
                           str(port or node.port), *map(str, files)], capture_output=True, text=True, timeout=timeout)


def echoscu(node, aet="ECHOSCU", extra=(), port=None) -> subprocess.CompletedProcess:
    return subprocess.run([need("echoscu"), "-aet", aet, "-aec", "HCCNODE", *extra, "127.0.0.1",
                           str(port or node.port)], capture_output=True, text=True, timeout=30)


# A stable_seconds that no stall of a loaded machine reaches: the watcher queues no study while
# its instances are still arriving; `release_watcher` then lets it queue what is whole.
WATCHER_HELD = {"stable_seconds": 3600.0}


def release_watcher(node) -> None:
    """(Re)start `node` with a one-second stable_seconds: each study, complete in the index by now,
    becomes exactly one job."""
    node.stop()
    node.configure(study={"stable_seconds": 1.0}).start()


def study_seqs(store) -> dict[str, int]:
    """Each study's seq (its change counter) by study UID."""
    return {r["study_uid"]: r["seq"] for r in store.query("SELECT study_uid, seq FROM studies")}


def store_responses(output: str) -> list[tuple[str, str]]:
    """(file, response) for each C-STORE in `storescu -v` output, in order; the response is
    dcmtk's status name ('Success', 'Refused: OutOfResources', ...)."""
    out, current = [], None
    for line in output.splitlines():
        if "Sending file:" in line:
            current = line.split("Sending file:", 1)[1].strip()
        elif "Received Store Response (" in line and current:
            out.append((current, line.split("Received Store Response (", 1)[1].rsplit(")", 1)[0]))
            current = None
    return out


def sop_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta: what travels in a C-STORE, byte for byte."""
    meta = pydicom.filereader.read_file_meta_info(path)
    return path.read_bytes()[132 + 12 + meta.FileMetaInformationGroupLength:]


def content_sha(path: Path) -> str:
    return hashlib.sha256(dataset_bytes(path)).hexdigest()


def integrity(db_path: Path) -> str:
    """SQLite's own check of the index, from a separate read-only connection."""
    c = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return "; ".join(r[0] for r in c.execute("PRAGMA integrity_check"))
    finally:
        c.close()


def unindexed_spool_files(node) -> list[Path]:
    """Files in the spool (in-flight temp files included) that no index row names."""
    known = {r["path"] for r in node.store().query("SELECT path FROM instance_versions")}
    spool = node.data_dir / "spool"
    return [p for p in spool.rglob("*") if p.is_file() and str(p.relative_to(node.data_dir)) not in known]


@contextmanager
def tmpfs(path: Path, size: str, fallback: str):
    """A real filesystem of `size` (tmpfs, which needs root) mounted at `path` for the block and
    unmounted after it, whatever happens in it; yields True. Where it cannot be mounted it yields
    False for the test to take its `fallback` (named in a warning); under CI=true the real
    disk-full path must run, so the test fails there instead, saying why."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        reason = "no mount command"
    else:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                           capture_output=True, text=True)
        reason = None if r.returncode == 0 else (r.stderr.strip() or f"mount exited with {r.returncode}").splitlines()[0]
    if reason:
        if os.geteuid() != 0:
            reason += " (not running as root)"
        msg = f"a {size} tmpfs could not be mounted at {path}: {reason}"
        if in_ci():
            pytest.fail(f"{msg}; under CI=true the disk-full tests need a real full filesystem (run them as root)")
        warnings.warn(f"{msg}; the disk-full test falls back to {fallback}", UserWarning, stacklevel=3)
    try:
        yield reason is None
    finally:
        if reason is None and subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)   # busy: detach it now


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run([need("openssl"), *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA, in `d`."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=hccnode test CA",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=hccnode test {name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return d
