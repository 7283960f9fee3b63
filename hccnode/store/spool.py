"""The spool: received instances as files, written durably, and their index rows.

`Spool.ingest()` is the whole C-STORE path from received bytes to an indexed file:
write to a temp name durably (in a helper thread while the bytes are hashed and the header parsed
from them, never re-encoded), rename into place, fsync the directory, commit the index
and audit rows (group commit with other associations). Only when it returns
SUCCESS may the SCP answer success. Anything that cannot be kept goes to quarantine
with its raw bytes and the reason.

Layout under the data directory:
    spool/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.<sha12>.dcm   (content-addressed suffix, so a
                                                               replacement never overwrites)
    spool/.tmp/<host>.<pid>/                                   (in-flight writes, one directory per process,
                                                               so receivers on several hosts share a spool;
                                                               stale ones removed at a receiver's start)
    quarantine/<time>-<n>.dcm                                  (raw bytes we refused)
"""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import json
import logging
import os
import re
import socket
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword

from hccnode import __version__, log
from hccnode import dicom_status as status
from hccnode.store import audit, engine
from hccnode.store.db import Store, now

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
IMPLEMENTATION_CLASS_UID = "2.25.293018322262423898304801851030077679834"  # UUID-derived (PS3.5 B.2), fixed for hccnode
IMPLEMENTATION_VERSION = f"HCCNODE_{__version__}"[:16]
SQLITE_FULL = 13  # sqlite3 result code: "database or disk is full"
# A temporary file of another host (or of a live process) older than this cannot be in flight: a
# store writes and renames it within one C-STORE, bounded by the association's timeouts.
STALE_TMP_SECONDS = 24 * 3600


def valid_uid(uid: object) -> bool:
    return isinstance(uid, str) and len(uid) <= 64 and bool(UID_RE.match(uid))


@dataclass
class Result:
    status: int
    comment: str = ""          # error comment for the C-STORE response (LO: 64 chars)
    outcome: str = ""          # stored | duplicate | replaced | quarantined | failed
    sop_uid: str = ""
    study_uid: str = ""


class RejectedDataset(Exception):
    """A dataset we will not store; carries the DIMSE status to answer."""

    def __init__(self, status_code: int, comment: str):
        super().__init__(comment)
        self.status = status_code
        self.comment = comment


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")   # gone already


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_new(path: Path) -> int:
    """A new file for writing whose every write is durable when it returns (O_DSYNC: the data and
    the metadata needed to read it back, as an fdatasync would make them), so one writev is one
    flush, with no return to the interpreter between the write and the flush."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DSYNC, 0o640)


def _write_all(fd: int, chunks: tuple[bytes, ...]) -> int:
    """Write `chunks` to `fd` (one writev, unless the system takes less) and close it; returns the size."""
    views = [memoryview(c) for c in chunks if len(c)]
    size = 0
    try:
        while views:
            n = os.writev(fd, views)
            size += n
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if n:
                views[0] = views[0][n:]
    finally:
        os.close(fd)
    return size


def _write_durably(path: Path, *chunks: bytes) -> int:
    """Write `chunks` to a new file, durably; returns the size."""
    return _write_all(_open_new(path), chunks)


def _meta_element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002 (PS3.5 7.1.2)."""
    tag = struct.pack("<HH", 0x0002, group_elem)
    if vr == b"OB":
        return tag + vr + b"\0\0" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _pad(text: str, pad: bytes) -> bytes:
    b = text.encode("ascii")
    return b + pad if len(b) % 2 else b


def file_preamble(sop_class: str, sop_uid: str, transfer_syntax: str, calling_ae: str) -> bytes:
    """Preamble, 'DICM' and File Meta Information for a received dataset (PS3.10 7.1).

    Encoded directly: eight fixed elements, and pydicom's general writer costs more than
    the fsync of the whole instance.
    """
    body = b"".join((
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", _pad(sop_class, b"\0")),
        _meta_element(0x0003, b"UI", _pad(sop_uid, b"\0")),
        _meta_element(0x0010, b"UI", _pad(transfer_syntax, b"\0")),
        _meta_element(0x0012, b"UI", _pad(IMPLEMENTATION_CLASS_UID, b"\0")),
        _meta_element(0x0013, b"SH", _pad(IMPLEMENTATION_VERSION, b" ")),
        _meta_element(0x0016, b"AE", _pad(calling_ae[:16], b" ")) if calling_ae else b"",
    ))
    return b"\0" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


_SLOW = object()          # _plain_value: pydicom must convert this one
_PLAIN_TEXT = {"CS", "DA", "TM", "DT", "AS"}     # pydicom: the whole value's padding stripped, then split
_PLAIN_NAMES = {"LO", "SH"}                      # pydicom: split, then each value's padding stripped
_DS_RE = re.compile(r"^ *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *$")
_IS_RE = re.compile(r"^ *[+-]?[0-9]+ *$")


def _plain_value(ds: pydicom.Dataset, tag: int):
    """The value pydicom would give for `tag`, read straight from the element's raw bytes where
    they are plain: US, and ASCII (no escape) CS, DA, TM, DT, AS, LO, SH, DS and IS values of the
    usual forms. A list for several values. None when absent or empty; _SLOW otherwise (converted,
    deferred, another VR, other characters or number forms: then pydicom converts). pydicom's
    conversion of the index fields was a fifth of the receiving thread's work per instance, and
    ASCII reads the same in every DICOM character set."""
    elem = ds.get_item(tag)
    if elem is None:
        return None
    if not isinstance(elem, pydicom.dataelem.RawDataElement) or elem.value is None:
        return _SLOW
    raw = elem.value
    vr = elem.VR or dictionary_VR(tag)
    if not raw:
        return None
    if vr == "US":
        if len(raw) % 2:
            return _SLOW      # pydicom refuses it (BytesLengthException): so does _value
        n = len(raw) // 2
        values = list(struct.unpack(("<" if elem.is_little_endian else ">") + "H" * n, raw))
        return values[0] if n == 1 else values
    if not raw.isascii() or b"\x1b" in raw:
        return _SLOW
    text = raw.decode("ascii")
    if vr in _PLAIN_TEXT:
        values = text.rstrip(" \0").split("\\")
    elif vr in _PLAIN_NAMES:
        values = [v.rstrip("\0 ") for v in text.split("\\")]
    elif vr in ("DS", "IS"):
        values = text.rstrip(" \0").split("\\")
        if not all((_DS_RE if vr == "DS" else _IS_RE).match(v) for v in values):
            return _SLOW
        values = [float(v) if vr == "DS" else int(v) for v in values]
    else:
        return _SLOW
    return values[0] if len(values) == 1 else values


def _value(ds: pydicom.Dataset, keyword: str):
    """The value of `keyword`, None when absent or not readable as its VR (pydicom converts on
    access and raises for a malformed number such as IS '1A', or a binary value of the wrong length):
    an odd value is never a reason to refuse."""
    value = _plain_value(ds, tag_for_keyword(keyword))
    if value is not _SLOW:
        return value
    try:
        return ds.get(keyword)
    except (ValueError, TypeError, OverflowError, pydicom.errors.BytesLengthException):
        return None


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    v = _value(ds, keyword)
    if v is None or v == "":
        return None
    if isinstance(v, (pydicom.multival.MultiValue, list)):
        return "\\".join(str(x) for x in v)
    return str(v)


def _num(ds: pydicom.Dataset, keyword: str) -> float | None:
    v = _value(ds, keyword)
    if v is None or v == "":
        return None
    try:
        return float(v[0] if isinstance(v, (pydicom.multival.MultiValue, list)) else v)
    except (TypeError, ValueError):
        return None


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    v = _num(ds, keyword)
    return int(v) if v is not None and abs(v) < 2**63 else None


def _json_list(ds: pydicom.Dataset, keyword: str) -> str | None:
    v = _value(ds, keyword)
    if not v:
        return None
    try:
        return json.dumps([float(x) for x in v])
    except (TypeError, ValueError):
        return None


def _first_frame_item(ds: pydicom.Dataset, group: str, keyword: str):
    """A value from the per-frame (first frame) or shared functional groups of a multi-frame image."""
    for seq_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(seq_kw)
        if seq and group in seq[0] and seq[0][group].value:
            item = seq[0][group][0]
            if keyword in item:
                return item
    return None


def header_row(ds: pydicom.Dataset) -> dict:
    """The index fields of one instance, from its header (no pixel data needed).

    Multi-frame images keep position, orientation, spacing and rescale in functional groups;
    those are read from the shared or first per-frame item.
    """
    row = {
        "modality": _text(ds, "Modality"),
        "instance_number": _int(ds, "InstanceNumber"),
        "image_type": _text(ds, "ImageType"),
        "series_description": _text(ds, "SeriesDescription"),
        "acquisition_date": _text(ds, "AcquisitionDate"),
        "acquisition_time": _text(ds, "AcquisitionTime"),
        "content_time": _text(ds, "ContentTime"),
        "contrast_agent": _text(ds, "ContrastBolusAgent"),
        "contrast_start_time": _text(ds, "ContrastBolusStartTime"),
        "contrast_route": _text(ds, "ContrastBolusRoute"),
        "image_position": _json_list(ds, "ImagePositionPatient"),
        "image_orientation": _json_list(ds, "ImageOrientationPatient"),
        "slice_location": _num(ds, "SliceLocation"),
        "slice_thickness": _num(ds, "SliceThickness"),
        "pixel_spacing": _json_list(ds, "PixelSpacing"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "number_of_frames": _int(ds, "NumberOfFrames"),
        "rescale_slope": _num(ds, "RescaleSlope"),
        "rescale_intercept": _num(ds, "RescaleIntercept"),
        "kvp": _num(ds, "KVP"),
        "diffusion_b_value": _num(ds, "DiffusionBValue"),
        "echo_time": _num(ds, "EchoTime"),
        "repetition_time": _num(ds, "RepetitionTime"),
        "manufacturer": _text(ds, "Manufacturer"),
    }
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        item = _first_frame_item(ds, "PlanePositionSequence", "ImagePositionPatient")
        if item is not None and row["image_position"] is None:
            row["image_position"] = _json_list(item, "ImagePositionPatient")
        item = _first_frame_item(ds, "PlaneOrientationSequence", "ImageOrientationPatient")
        if item is not None and row["image_orientation"] is None:
            row["image_orientation"] = _json_list(item, "ImageOrientationPatient")
        item = _first_frame_item(ds, "PixelMeasuresSequence", "PixelSpacing")
        if item is not None:
            row["pixel_spacing"] = row["pixel_spacing"] or _json_list(item, "PixelSpacing")
            row["slice_thickness"] = row["slice_thickness"] or _num(item, "SliceThickness")
        item = _first_frame_item(ds, "PixelValueTransformationSequence", "RescaleSlope")
        if item is not None and row["rescale_slope"] is None:
            row["rescale_slope"] = _num(item, "RescaleSlope")
            row["rescale_intercept"] = _num(item, "RescaleIntercept")
    return row


PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _check_pixels(ds: pydicom.Dataset) -> None:
    """An image must carry all its pixel data: pydicom reads a truncated file without complaint."""
    present = [kw for kw in PIXEL_KEYWORDS if kw in ds]
    if "Rows" not in ds:
        return
    if not present:
        raise RejectedDataset(status.CANNOT_UNDERSTAND, "pixel data missing or truncated")
    if ds.file_meta.TransferSyntaxUID.is_compressed or present[0] != "PixelData":
        return
    bits = _int(ds, "BitsAllocated") or 0
    frames = _int(ds, "NumberOfFrames") or 1
    expected = (_int(ds, "Rows") or 0) * (_int(ds, "Columns") or 0) * frames * (_int(ds, "SamplesPerPixel") or 1) * bits
    expected = (expected + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise RejectedDataset(status.CANNOT_UNDERSTAND, f"pixel data truncated ({actual} of {expected} bytes)")


def _walk_sequences(ds: pydicom.Dataset) -> None:
    """Parse every sequence item, so a broken nested length is found now. Leaf values stay
    raw: an odd value format is the business of whoever reads it, not a reason to refuse."""
    for tag in ds.keys():
        raw = ds.get_item(tag)
        vr = raw.VR
        if vr is None:  # implicit VR: the dictionary says
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                continue
        if vr == "SQ":
            for item in ds[tag].value:
                _walk_sequences(item)


def parse_header(part10: bytes) -> pydicom.Dataset:
    """Parse a received instance as it is written to the spool (preamble, file meta, data set, in
    memory: the bytes, not a re-encoding), its structure too (sequences included), and check its
    pixel data is whole; raise RejectedDataset otherwise. Pixel values are not decoded.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(part10))
        _walk_sequences(ds)
    except Exception as exc:  # pydicom raises many types for broken streams
        raise RejectedDataset(status.CANNOT_UNDERSTAND, "unreadable data set: broken encoding") from exc
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = ds.get(kw)
        if not value:
            raise RejectedDataset(status.CANNOT_UNDERSTAND, f"missing {kw}")
        if not valid_uid(str(value)):
            raise RejectedDataset(status.CANNOT_UNDERSTAND, f"invalid {kw}")
    _check_pixels(ds)
    return ds


@dataclass
class Received:
    """How an instance arrived and where it is kept."""
    path: str            # relative to the data directory
    size: int
    sha256: str          # content_hash()
    transfer_syntax: str
    calling_ae: str


@dataclass
class IndexEntry:
    """The rows one received instance adds to the index, taken from its header before the write
    lock (`index_instance` only executes them)."""
    instance: dict       # the instances row
    study: tuple         # study_uid, patient_key, study_date, study_time, study_description
    series_number: int | None
    patient_key: str | None


def content_hash(transfer_syntax: str, dataset: bytes) -> str:
    """SHA-256 of the transfer syntax and the data set as received: same content, same hash."""
    h = hashlib.sha256(transfer_syntax.encode())
    h.update(b"\0")
    h.update(dataset)
    return h.hexdigest()


def index_entry(ds: pydicom.Dataset, patient_key: str | None, received: Received) -> IndexEntry:
    """The index rows of one received instance, from its parsed header."""
    row = header_row(ds)
    row.update(sop_uid=str(ds.SOPInstanceUID), series_uid=str(ds.SeriesInstanceUID),
               study_uid=str(ds.StudyInstanceUID), sop_class_uid=str(ds.SOPClassUID),
               transfer_syntax=received.transfer_syntax, path=received.path, size=received.size,
               sha256=received.sha256, received_at=None, calling_ae=received.calling_ae)
    return IndexEntry(row, (row["study_uid"], patient_key, _text(ds, "StudyDate"), _text(ds, "StudyTime"),
                            _text(ds, "StudyDescription")), _int(ds, "SeriesNumber"), patient_key)


def index_instance(c, entry: IndexEntry) -> str:
    """In write transaction `c`: insert or replace the instance row, its study and series, its
    version and its audit row; returns the outcome (stored | replaced | duplicate)."""
    row = entry.instance
    t = row["received_at"] = now()
    sop_uid, series_uid, study_uid, digest = row["sop_uid"], row["series_uid"], row["study_uid"], row["sha256"]
    calling_ae, size, path = row["calling_ae"], row["size"], row["path"]
    old = c.execute("SELECT sha256, path FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
    if old and old["sha256"] == digest:
        c.execute("INSERT INTO instance_versions (sop_uid, sha256, path, size, received_at, calling_ae, outcome)"
                  " VALUES (?,?,?,?,?,?, 'duplicate')", (sop_uid, digest, old["path"], size, t, calling_ae))
        audit.append(c, "instance.duplicate", f"AE:{calling_ae}", study_uid=study_uid, patient_key=entry.patient_key,
                     input_hashes=[digest], sop=sop_uid, series=series_uid)
        return "duplicate"
    c.execute(
        """INSERT INTO studies (study_uid, patient_key, study_date, study_time, study_description,
                                first_received, last_received, seq)
           VALUES (?,?,?,?,?,?,?,1)
           ON CONFLICT(study_uid) DO UPDATE SET last_received = excluded.last_received,
               seq = studies.seq + 1,
               patient_key = COALESCE(studies.patient_key, excluded.patient_key)""",
        (*entry.study, t, t))
    c.execute(
        """INSERT INTO series (series_uid, study_uid, modality, series_number, series_description,
                               image_type, manufacturer, first_received, last_received)
           VALUES (?,?,?,?,?,?,?,?,?)
           ON CONFLICT(series_uid) DO UPDATE SET last_received = excluded.last_received""",
        (series_uid, study_uid, row["modality"], entry.series_number, row["series_description"],
         row["image_type"], row["manufacturer"], t, t))
    c.execute(f"INSERT INTO instances ({', '.join(row)}) VALUES ({', '.join('?' * len(row))}) ON CONFLICT (sop_uid)"
              " DO UPDATE SET " + ", ".join(f"{k} = excluded.{k}" for k in row if k != "sop_uid"), tuple(row.values()))
    if old:
        c.execute("UPDATE instance_versions SET outcome = 'replaced' WHERE sop_uid = ? AND sha256 = ?"
                  " AND outcome = 'stored'", (sop_uid, old["sha256"]))
    c.execute("INSERT INTO instance_versions (sop_uid, sha256, path, size, received_at, calling_ae, outcome)"
              " VALUES (?,?,?,?,?,?, 'stored')", (sop_uid, digest, path, size, t, calling_ae))
    # In the same transaction: no instance is acknowledged without its audit row.
    audit.append(c, "instance.replaced" if old else "instance.stored", f"AE:{calling_ae}",
                 study_uid=study_uid, patient_key=entry.patient_key, input_hashes=[digest], sop=sop_uid,
                 series=series_uid, sop_class=row["sop_class_uid"], bytes=size, path=path,
                 replaced_sha256=old["sha256"] if old else None)
    return "replaced" if old else "stored"


_HELPERS: tuple[int, ThreadPoolExecutor] | None = None
_HELPERS_LOCK = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """Threads that write received files while the receiving thread hashes and parses them
    (this process's own: a forked worker does not inherit threads)."""
    global _HELPERS
    with _HELPERS_LOCK:
        if _HELPERS is None or _HELPERS[0] != os.getpid():
            _HELPERS = (os.getpid(), ThreadPoolExecutor(max_workers=32, thread_name_prefix="spool-io"))
        return _HELPERS[1]


def _done_now(fn, *args) -> Future:
    """`fn(*args)` run in this thread, as a settled Future."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:
        future.set_exception(exc)
    return future


class Spool:
    """Durable storage of received instances under a data directory."""

    def __init__(self, store: Store):
        self.store = store
        self.root = store.data_dir / "spool"
        self.tmp_root = self.root / ".tmp"
        # This process's own: created at its first write (and again if removed as stale meanwhile).
        self.tmp = self.tmp_root / f"{_host()}.{os.getpid()}"
        self.quarantine_dir = store.data_dir / "quarantine"
        for d in (self.root, self.tmp_root, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._dirs_known: set[Path] = set()
        self._dirs_lock = threading.Lock()
        self._counter = itertools.count()
        self._sop_locks = [threading.Lock() for _ in range(64)]
        self._receiving = 0                    # ingest() calls now running, all threads
        self._receiving_lock = threading.Lock()

    def clean_tmp(self) -> int:
        """Remove in-flight files left by a crash (none of them was ever acknowledged); returns how
        many. Several receivers may share the spool, so only what cannot be in flight goes:
        this process's own directory (a previous process with the same pid, as in a container),
        a directory of this host whose process is gone, and elsewhere files older than
        STALE_TMP_SECONDS (and such a directory once empty: a live owner makes it again)."""
        host, cutoff, n = _host(), time.time() - STALE_TMP_SECONDS, 0
        for d in self.tmp_root.iterdir():
            if not d.is_dir():    # the former layout (one shared .tmp): its writer may still run elsewhere
                if _mtime(d) < cutoff:
                    d.unlink(missing_ok=True)
                    n += 1
                continue
            owner, _, pid = d.name.rpartition(".")
            mine = owner == host and pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid)))
            stale = mine or _mtime(d) < cutoff     # before its files go (which touches it)
            try:
                for p in list(d.iterdir()):
                    if mine or _mtime(p) < cutoff:
                        p.unlink(missing_ok=True)
                        n += 1
                if d != self.tmp and stale:
                    d.rmdir()     # fails when a live owner wrote a file meanwhile: then it stays
            except OSError:       # removed meanwhile by another receiver starting, or not empty
                continue
        return n

    def _unique(self, suffix: str) -> str:
        return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{next(self._counter)}{suffix}"

    def _ensure_dir(self, path: Path) -> None:
        """Create `path` and make its directory entry durable (fsync each new parent)."""
        with self._dirs_lock:
            if path in self._dirs_known:
                return
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                pass
            _fsync_dir(d.parent)
        with self._dirs_lock:
            self._dirs_known.add(path)

    def ingest(self, sop_class: str, sop_uid: str, transfer_syntax: str, dataset: bytes,
               calling_ae: str = "") -> Result:
        """Keep one received dataset (the C-STORE Data Set as sent, without file meta).

        A helper thread writes the file to a temporary name in one durable write (`_open_new`)
        while this thread hashes the bytes and parses the header from them in memory. The hash
        comes first: hashlib lets go of the interpreter lock, so the helper gets into its write
        meanwhile, and the write and its flush then overlap the parse (a thread holding the lock
        to parse would keep the helper from even starting). The file is renamed to its
        content-addressed name and the directory fsynced. Only when both are durable are the
        index and audit rows committed (in one transaction with other associations' rows when
        they commit at the same moment), and then the caller may answer success.

        With other instances arriving at the same time, all of it runs in this thread instead:
        the associations already keep the disk and the processors busy together, and a hand-off
        to a helper thread would only wait for the interpreter lock.
        """
        with self._receiving_lock:
            self._receiving += 1
            alone = self._receiving == 1
        try:
            return self._ingest(sop_class, sop_uid, transfer_syntax, dataset, calling_ae, alone)
        finally:
            with self._receiving_lock:
                self._receiving -= 1

    def _ingest(self, sop_class: str, sop_uid: str, transfer_syntax: str, dataset: bytes, calling_ae: str,
                alone: bool) -> Result:
        if not valid_uid(sop_uid):
            return self._quarantine(dataset, sop_class, sop_uid, calling_ae, status.CANNOT_UNDERSTAND,
                                    "invalid Affected SOP Instance UID", preamble=b"")
        preamble = file_preamble(sop_class, sop_uid, transfer_syntax, calling_ae)
        tmp = self.tmp / self._unique(".part")
        try:
            try:
                fd = _open_new(tmp)
            except FileNotFoundError:   # first write of this process, or its directory removed as stale
                self.tmp.mkdir(parents=True, exist_ok=True)
                fd = _open_new(tmp)
        except OSError as exc:
            return self._failed(exc, sop_uid, sop_class, calling_ae)
        written = (_helpers().submit if alone else _done_now)(_write_all, fd, (preamble, dataset))
        size = len(preamble) + len(dataset)
        try:
            digest = content_hash(transfer_syntax, dataset)
            ds = parse_header(preamble + dataset)
            if str(ds.SOPClassUID) != sop_class:
                raise RejectedDataset(status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                      "SOP Class UID differs from the request")
            if str(ds.SOPInstanceUID) != sop_uid:
                raise RejectedDataset(status.CANNOT_UNDERSTAND,
                                      "SOP Instance UID differs from the request")
        except RejectedDataset as exc:
            try:
                written.result()
            except OSError as write_exc:
                tmp.unlink(missing_ok=True)
                return self._failed(write_exc, sop_uid, sop_class, calling_ae)
            return self._quarantine_file(tmp, size, sop_class, sop_uid, calling_ae, exc.status, exc.comment)
        except BaseException:   # unexpected: the SCP answers it, and nothing unacknowledged stays behind
            wait([written])
            tmp.unlink(missing_ok=True)
            raise

        study_uid, series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        rel = Path("spool") / study_uid / series_uid / f"{sop_uid}.{digest[:12]}.dcm"
        final = self.store.data_dir / rel
        # One writer per instance at a time, so a failed index can tell the file it placed (and
        # must take back: it was never acknowledged) from an identical one already indexed.
        with self._sop_locks[hash(sop_uid) % len(self._sop_locks)]:
            placed = False
            try:
                entry = index_entry(ds, self.store.patient_key(_text(ds, "PatientID"), _text(ds, "IssuerOfPatientID")),
                                    Received(str(rel), size, digest, transfer_syntax, calling_ae))
                self._ensure_dir(final.parent)
                written.result()   # whole and durable before it takes its name
                placed = not final.exists()
                os.rename(tmp, final)
                _fsync_dir(final.parent)
                outcome = self.store.grouped(lambda c: index_instance(c, entry))
            except BaseException as exc:
                wait([written])   # the helper is done with the file before it is removed
                tmp.unlink(missing_ok=True)
                if placed:
                    final.unlink(missing_ok=True)
                if not isinstance(exc, (OSError, *engine.ERRORS)):
                    raise         # unexpected: as above
                return self._failed(exc, sop_uid, sop_class, calling_ae)
        # "duplicate": this content was indexed already (a resend, or another association stored it
        # meanwhile); the file name is content-addressed, so the rename landed on an identical file.
        # DEBUG: the audit row records every instance; the SCP logs each association's counts.
        log.event("instance." + outcome, level=logging.DEBUG, study=study_uid, series=series_uid, sop=sop_uid,
                  bytes=size, calling_ae=calling_ae)
        return Result(status.SUCCESS, outcome=outcome, sop_uid=sop_uid, study_uid=study_uid)

    def _failed(self, exc: Exception, sop_uid: str, sop_class: str, calling_ae: str) -> Result:
        """A failure to keep a good dataset (disk, permissions, database): Out of Resources."""
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            comment = "spool disk full"
        elif getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL:  # the index shares the data directory
            comment = "index disk full"
        elif isinstance(exc, OSError):
            comment = f"spool not writable: {errno.errorcode.get(exc.errno or 0, 'error')}"
        else:
            comment = "index unavailable"  # the log names the error (type) below
        log.event("instance.failed", level=logging.ERROR, sop=sop_uid, calling_ae=calling_ae, reason=comment,
                  error=type(exc).__name__)
        self._record_quarantine(sop_uid, sop_class, calling_ae, None, None, status.OUT_OF_RESOURCES, comment)
        return Result(status.OUT_OF_RESOURCES, comment[:64], outcome="failed", sop_uid=sop_uid)

    def _quarantine_file(self, tmp: Path, size: int, sop_class: str, sop_uid: str, calling_ae: str,
                         code: int, reason: str) -> Result:
        dest = self.quarantine_dir / self._unique(".dcm")
        try:
            os.rename(tmp, dest)
            _fsync_dir(self.quarantine_dir)
            rel: str | None = str(dest.relative_to(self.store.data_dir))
        except OSError:
            tmp.unlink(missing_ok=True)
            rel = None
        self._record_quarantine(sop_uid, sop_class, calling_ae, rel, size, code, reason)
        log.event("instance.quarantined", level=logging.WARNING, sop=sop_uid, calling_ae=calling_ae, status=f"0x{code:04X}",
                  reason=reason, path=rel)
        return Result(code, reason[:64], outcome="quarantined", sop_uid=sop_uid)

    def _quarantine(self, dataset: bytes, sop_class: str, sop_uid: str, calling_ae: str, code: int,
                    reason: str, preamble: bytes) -> Result:
        dest = self.quarantine_dir / self._unique(".raw")
        try:
            size = _write_durably(dest, preamble, dataset)
            _fsync_dir(self.quarantine_dir)
            rel: str | None = str(dest.relative_to(self.store.data_dir))
        except OSError:
            size, rel = len(dataset), None
        self._record_quarantine(sop_uid, sop_class, calling_ae, rel, size, code, reason)
        log.event("instance.quarantined", level=logging.WARNING, calling_ae=calling_ae, status=f"0x{code:04X}",
                  reason=reason, path=rel)
        return Result(code, reason[:64], outcome="quarantined", sop_uid=sop_uid)

    def _record_quarantine(self, sop_uid, sop_class, calling_ae, rel, size, code, reason) -> None:
        try:
            with self.store.tx() as c:
                c.execute("INSERT INTO quarantine (received_at, calling_ae, sop_uid, sop_class_uid, path, size,"
                          " status, reason) VALUES (?,?,?,?,?,?,?,?)",
                          (now(), calling_ae, sop_uid if valid_uid(sop_uid) else None, sop_class, rel, size,
                           code, reason))
                audit.append(c, "instance.quarantined" if rel else "instance.rejected", f"AE:{calling_ae}",
                             sop=sop_uid if valid_uid(sop_uid) else None, sop_class=sop_class,
                             status=f"0x{code:04X}", reason=reason, path=rel, bytes=size)
        except engine.ERRORS as exc:  # the refusal itself still goes out; the log keeps the record
            log.event("quarantine.unrecorded", level=logging.ERROR, error=type(exc).__name__)


# What a C-STORE request carries about its data set, from a file's meta information (PS3.10 7.1).
META_UIDS = {"MediaStorageSOPClassUID": "Media Storage SOP Class UID",
             "MediaStorageSOPInstanceUID": "Media Storage SOP Instance UID", "TransferSyntaxUID": "Transfer Syntax UID"}


MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage (PS3.10 8.6, PS3.3 F)


def part10_parts(path: Path) -> tuple[str, str, str, bytes]:
    """(SOP Class UID, SOP Instance UID, transfer syntax, data set bytes) of a DICOM Part 10 file:
    what a C-STORE request carries for it (the data set as written, File Meta Information removed)."""
    raw = Path(path).read_bytes()
    if len(raw) < 144 or raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{Path(path).name}: not a DICOM Part 10 file (no DICM preamble)")
    (group_length,) = struct.unpack("<I", raw[140:144])
    parts = meta_uids(path)
    # A C-STORE sender (dcmtk's storescu among them) names the instance by the data set's own
    # SOP Class and Instance UIDs: where the file meta disagrees or lacks them, the data set wins.
    try:
        own = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        parts[:2] = [str(own.get(kw) or "") or part for kw, part in zip(("SOPClassUID", "SOPInstanceUID"), parts)]
    except Exception:  # an unreadable data set is refused, with its reason, when it is stored
        pass
    if parts[0] == MEDIA_STORAGE_DIRECTORY:
        raise ValueError(f"{Path(path).name}: a DICOMDIR, the index of a file set, not an instance "
                         "(the files it lists are stored themselves)")
    _require(path, parts)
    return (*parts, raw[144 + group_length:])


def meta_uids(path: Path, required: bool = False) -> list[str]:
    """[Media Storage SOP Class UID, Media Storage SOP Instance UID, Transfer Syntax UID] of a
    Part 10 file ("" for each absent one); ValueError naming the file when its File Meta
    Information cannot be read, or with `required` when one of them is absent."""
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception as exc:  # pydicom raises many types for a broken or absent file meta
        raise ValueError(f"{Path(path).name}: not a DICOM Part 10 file (unreadable File Meta Information)") from exc
    parts = [str(meta.get(kw) or "") for kw in META_UIDS]
    if required:
        _require(path, parts)
    return parts


def _require(path: Path, parts: list[str]) -> None:
    missing = [name for name, value in zip(META_UIDS.values(), parts) if not value]
    if missing:
        raise ValueError(f"{Path(path).name}: File Meta Information lacks {', '.join(missing)}")


def ingest_file(spool: "Spool", path: Path, calling_ae: str = "") -> Result:
    """Keep a Part 10 file through the same path as a C-STORE of its data set (`Spool.ingest`)."""
    sop_class, sop_uid, syntax, data = part10_parts(path)
    return spool.ingest(sop_class, sop_uid, syntax, data, calling_ae=calling_ae)
