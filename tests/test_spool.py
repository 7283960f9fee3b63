"""Spool and index: durable writes, idempotency, replacement, quarantine, disk full."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pydicom
import pytest

from dicomgen import ct_series
from hccnode import dicom_status as status
from hccnode.store.db import Store
from hccnode.store.spool import Spool, header_row
from node_support import tmpfs


def received(path: Path) -> tuple[str, str, str, bytes]:
    """(sop class, sop uid, transfer syntax, dataset bytes) as a C-STORE would carry them."""
    meta = pydicom.filereader.read_file_meta_info(path)
    data = path.read_bytes()[132 + 12 + meta.FileMetaInformationGroupLength:]
    return str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID), data


@pytest.fixture
def spool(store):
    """A spool on each engine's index (conftest's `store`: SQLite, PostgreSQL)."""
    return Spool(store)


def test_ingest_writes_a_readable_file_and_indexes_it(spool, tmp_path):
    f = ct_series(tmp_path / "in", n=1)[0]
    res = spool.ingest(*received(f), calling_ae="CT1")
    assert res.status == status.SUCCESS and res.outcome == "stored"
    row = spool.store.query("SELECT * FROM instances")[0]
    ds = pydicom.dcmread(spool.store.data_dir / row["path"])
    assert ds.SOPInstanceUID == res.sop_uid and ds.file_meta.SourceApplicationEntityTitle == "CT1"
    assert (ds.pixel_array == pydicom.dcmread(f).pixel_array).all()
    assert row["path"].startswith(f"spool/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/")
    assert not list(spool.tmp.iterdir())


def test_same_content_twice_is_idempotent(spool, tmp_path):
    f = ct_series(tmp_path / "in", n=1)[0]
    spool.ingest(*received(f))
    seq = spool.store.query("SELECT seq FROM studies")[0]["seq"]
    res = spool.ingest(*received(f))
    assert res.status == status.SUCCESS and res.outcome == "duplicate"
    assert spool.store.query("SELECT seq FROM studies")[0]["seq"] == seq   # no re-analysis
    assert len(list((spool.root).rglob("*.dcm"))) == 1


def test_changed_content_replaces_and_keeps_both_versions(spool, tmp_path):
    f = ct_series(tmp_path / "in", n=1)[0]
    spool.ingest(*received(f))
    ds = pydicom.dcmread(f)
    ds.SeriesDescription = "NEW"
    ds.save_as(f)
    res = spool.ingest(*received(f))
    assert res.outcome == "replaced"
    versions = spool.store.query("SELECT outcome, path FROM instance_versions ORDER BY id")
    assert [v["outcome"] for v in versions] == ["replaced", "stored"]
    assert versions[0]["path"] != versions[1]["path"]
    assert all((spool.store.data_dir / v["path"]).exists() for v in versions)
    assert spool.store.query("SELECT seq FROM studies")[0]["seq"] == 2


def test_sop_class_mismatch_is_refused_with_a900_and_quarantined(spool, tmp_path):
    f = ct_series(tmp_path / "in", n=1)[0]
    _, sop, ts, data = received(f)
    res = spool.ingest("1.2.840.10008.5.1.4.1.1.4", sop, ts, data)       # claims MR
    assert res.status == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    q = spool.store.query("SELECT * FROM quarantine")[0]
    assert q["status"] == 0xA900 and (spool.store.data_dir / q["path"]).exists()


def test_header_row_reads_multiframe_functional_groups():
    ds = pydicom.Dataset()
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.NumberOfFrames = 3
    shared = pydicom.Dataset()
    pm = pydicom.Dataset()
    pm.PixelSpacing = [0.7, 0.7]
    pm.SliceThickness = 1.25
    shared.PixelMeasuresSequence = [pm]
    ori = pydicom.Dataset()
    ori.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [ori]
    frame = pydicom.Dataset()
    pos = pydicom.Dataset()
    pos.ImagePositionPatient = [-10, -20, 30]
    frame.PlanePositionSequence = [pos]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [frame]
    row = header_row(ds)
    assert row["pixel_spacing"] == "[0.7, 0.7]" and row["slice_thickness"] == 1.25
    assert row["image_position"] == "[-10.0, -20.0, 30.0]" and row["number_of_frames"] == 3


def test_disk_full_answers_out_of_resources_and_recovers(tmp_path, monkeypatch):
    f = ct_series(tmp_path / "in", n=2, size=256)
    mnt = tmp_path / "small"
    with tmpfs(mnt, "4m", fallback="os.writev monkeypatched to raise ENOSPC") as mounted:
        spool = Spool(Store(mnt / "data"))
        spool.store.conn().execute("PRAGMA wal_autocheckpoint=0")
        filler = mnt / "filler"
        if mounted:   # a real full filesystem
            with open(filler, "wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
        else:         # no permission to mount: inject the same error the kernel would give
            real_write = os.writev
            monkeypatch.setattr(os, "writev", lambda fd, b: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
        res = spool.ingest(*received(f[0]))
        assert res.status == status.OUT_OF_RESOURCES and res.comment == "spool disk full"
        assert spool.store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
        assert not list(spool.tmp.iterdir())                 # no half-written file left
        if mounted:
            filler.unlink()
        else:
            monkeypatch.setattr(os, "writev", real_write)
        res = spool.ingest(*received(f[1]))                   # space is back: stored again
        assert res.status == status.SUCCESS


def test_a_small_filesystem_that_cannot_be_mounted_fails_under_ci_and_warns_otherwise(tmp_path, monkeypatch):
    """The disk-full tests never fall back silently: "bogus" is a size mount refuses."""
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"tmpfs could not be mounted .*under CI=true"):
        with tmpfs(tmp_path / "ci", "bogus", fallback="an injected error"):
            pass
    monkeypatch.setenv("CI", "false")
    with pytest.warns(UserWarning, match="falls back to an injected error"):
        with tmpfs(tmp_path / "dev", "bogus", fallback="an injected error") as mounted:
            assert mounted is False


def test_the_small_filesystem_is_unmounted_even_when_the_test_fails(tmp_path):
    mnt = tmp_path / "small"
    with pytest.raises(RuntimeError):
        with tmpfs(mnt, "1m", fallback="nothing") as mounted:
            assert mounted and os.path.ismount(mnt)
            raise RuntimeError("the test failed")
    assert not os.path.ismount(mnt)


def test_a_file_left_at_the_instance_name_by_a_crash_is_replaced_by_the_received_content(spool, tmp_path):
    """A crash can leave an unindexed file at an instance's spool name (between the rename and
    the commit; cut short, from a version that renamed while the flush ran, or by a failing
    disk); a resend replaces it with the content received."""
    from hccnode.store.spool import content_hash

    f = ct_series(tmp_path / "in", n=1)[0]
    sop_class, sop_uid, syntax, data = received(f)
    ds = pydicom.dcmread(f)
    final = (spool.root / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
             / f"{sop_uid}.{content_hash(syntax, data)[:12]}.dcm")
    final.parent.mkdir(parents=True)
    final.write_bytes(b"\0" * 100)                       # what a cut write leaves
    res = spool.ingest(sop_class, sop_uid, syntax, data)
    assert res.outcome == "stored"
    row = spool.store.query("SELECT path FROM instances")[0]
    assert spool.store.data_dir / row["path"] == final
    assert received(final)[3] == data


def test_a_receiver_starting_removes_only_temporary_files_that_cannot_be_in_flight(spool, tmp_path):
    """Receivers on several hosts share spool/.tmp, one directory per process (<host>.<pid>)."""
    import shutil
    import subprocess
    import sys
    import time

    from hccnode.store.spool import STALE_TMP_SECONDS, _host

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)   # a process of this host that has ended (its pid not reused: checked below)
    assert not Path(f"/proc/{dead_pid}").exists()
    old = time.time() - STALE_TMP_SECONDS - 60
    dirs = {"own": spool.tmp, "dead": spool.tmp_root / f"{_host()}.{dead_pid}",
            "live": spool.tmp_root / f"{_host()}.{os.getppid()}",
            "other_fresh": spool.tmp_root / "other-host.example.7", "other_old": spool.tmp_root / "old-host.9"}
    for name, d in dirs.items():
        d.mkdir(parents=True)
        (d / "a.part").write_bytes(b"x")
    os.utime(dirs["other_old"] / "a.part", (old, old))
    os.utime(dirs["other_old"], (old, old))
    (dirs["other_fresh"] / "b.part").write_bytes(b"x")
    os.utime(dirs["other_fresh"] / "b.part", (old, old))   # an old file beside a fresh one: only it goes

    (spool.tmp_root / "fresh.part").write_bytes(b"x")     # the former layout: files in .tmp itself
    (spool.tmp_root / "old.part").write_bytes(b"x")
    os.utime(spool.tmp_root / "old.part", (old, old))

    assert spool.clean_tmp() == 5      # own, dead, other_old, the old file of other_fresh, old.part
    assert (spool.tmp_root / "fresh.part").exists() and not (spool.tmp_root / "old.part").exists()
    assert dirs["own"].is_dir() and not list(dirs["own"].iterdir())
    assert not dirs["dead"].exists() and not dirs["other_old"].exists()
    assert list(dirs["live"].iterdir()) == [dirs["live"] / "a.part"]       # a live receiver's store in flight
    assert list(dirs["other_fresh"].iterdir()) == [dirs["other_fresh"] / "a.part"]

    shutil.rmtree(dirs["own"])            # removed as stale by another host: the next store makes it again
    f = ct_series(tmp_path / "in", n=1)[0]
    assert spool.ingest(*received(f)).status == status.SUCCESS
    assert dirs["own"].is_dir() and not list(dirs["own"].iterdir())


def test_index_fields_read_from_raw_bytes_equal_pydicom_s_conversion_on_files_others_wrote(tmp_path, monkeypatch):
    """header_row reads plain values straight from the raw bytes (spool._plain_value): on every
    file pydicom (and pydicom-data) ships, and on generated CT, the row is the one pydicom's own
    conversion gives."""
    from test_real_files import pydicom_files

    from hccnode.store import spool as spool_module

    files = pydicom_files(tmp_path / "pydicom") + ct_series(tmp_path / "ct", n=2)
    compared = plain = 0
    for f in files:
        try:
            ds = pydicom.dcmread(f, force=True)
            fast = header_row(ds)
        except Exception:  # noqa: BLE001 - a file pydicom cannot read: not what is compared here
            continue
        with monkeypatch.context() as m:
            m.setattr(spool_module, "_plain_value", lambda ds, tag: spool_module._SLOW)
            slow = header_row(pydicom.dcmread(f, force=True))
        assert fast == slow, f.name
        compared += 1
        plain += any(v is not None for v in fast.values())
    assert compared > 100 and plain > 100


def _with_rows_bytes(path: Path, rows: bytes) -> tuple[str, str, str, bytes]:
    """`received(path)`, its Rows (US) value replaced by `rows` (Explicit VR Little Endian: the
    element is tag, 'US', a 16-bit length, the value)."""
    sop_class, sop_uid, syntax, data = received(path)
    ds = pydicom.dcmread(path)
    good = b"\x28\x00\x10\x00US\x02\x00" + int(ds.Rows).to_bytes(2, "little")
    assert data.count(good) == 1
    return sop_class, sop_uid, syntax, data.replace(good, b"\x28\x00\x10\x00US" + len(rows).to_bytes(2, "little") + rows)


@pytest.mark.parametrize("rows", [b"\x02\x00\x00", b"\x02"], ids=["3 bytes", "1 byte"])
def test_a_binary_value_of_the_wrong_length_is_stored_with_that_field_empty(spool, tmp_path, rows):
    """An odd value is never a reason to refuse: a US value of odd length (pydicom refuses to read
    it) leaves the index field empty, as a malformed number does."""
    f = ct_series(tmp_path / "in", n=1)[0]
    res = spool.ingest(*_with_rows_bytes(f, rows))
    assert res.status == status.SUCCESS
    assert spool.store.query("SELECT rows, columns FROM instances") == [{"rows": None, "columns": 64}]
    assert not list(spool.tmp.iterdir())


@pytest.mark.parametrize("where", ["parse_header", "index_entry", "index_instance"])
def test_an_unexpected_error_leaves_no_file_of_the_instance_behind(spool, tmp_path, monkeypatch, where):
    """Whatever goes wrong unexpectedly, the instance was not acknowledged: neither its temporary
    file nor a file at its spool name stays (the SCP answers the error)."""
    from hccnode.store import spool as spool_module

    def broken(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(spool_module, where, broken)
    f = ct_series(tmp_path / "in", n=1)[0]
    with pytest.raises(RuntimeError):
        spool.ingest(*received(f))
    assert not list(spool.tmp.iterdir())
    assert not [p for p in spool.root.rglob("*.dcm")]
    assert spool.store.query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 0
