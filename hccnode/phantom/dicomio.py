"""DICOM plumbing shared by the phantom writers: deterministic UIDs, identity, file writing."""

from __future__ import annotations

import hashlib
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless,
                         PYDICOM_IMPLEMENTATION_UID)

from hccnode import __version__

_NAMESPACE = uuid.UUID("6f1d0c39-8a0e-5b7e-9f33-9b2b0d5c1a7e")
TRANSFER_SYNTAX = {"none": ExplicitVRLittleEndian, "rle": RLELossless,
                   "jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless}


def uid(seed: int, *parts: object) -> str:
    """A 2.25 UID from a name-based (v5) UUID of the seed and `parts`: same inputs, same UID."""
    name = "hccnode-phantom/" + "/".join(str(p) for p in (seed,) + parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def rng_key(seed: int, *parts: object) -> list[int]:
    """Seed material for numpy's default_rng that is stable across runs and platforms."""
    h = hashlib.sha256("/".join(str(p) for p in (seed,) + parts).encode()).digest()
    return [int.from_bytes(h[i:i + 4], "little") for i in range(0, 16, 4)]


def patient(seed: int) -> dict[str, str]:
    """Synthetic, distinctive identity (tests grep logs for it): never a real person."""
    tag = hashlib.sha256(f"hccnode-phantom-patient/{seed}".encode()).hexdigest()[:8].upper()
    birth = date(1950, 1, 1) + timedelta(days=int(tag, 16) % (25 * 365))
    return {"name": f"PHANTOM^LIVER^{tag}", "id": f"PHLV{tag}", "birth_date": birth.strftime("%Y%m%d"),
            "sex": "M"}


def study_start(seed: int, week: int = 0) -> datetime:
    """Bolus start of the (baseline) study: a weekday morning derived from the seed, plus `week` weeks."""
    base = datetime(2026, 1, 5, 9, 0, 0) + timedelta(days=7 * (seed % 40), seconds=(seed * 37) % 3600)
    return base + timedelta(weeks=week)


def dicom_time(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")[:-3]


def dicom_date(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def add_meta(ds: Dataset, compression: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"HCCNODE_{__version__}"[:16]
    ds.file_meta = meta


def save(ds: Dataset, path: Path, compression: str = "none") -> None:
    """Write `ds` (pixel data native little endian) to `path`, compressed losslessly if asked."""
    add_meta(ds, compression)
    if compression != "none":
        ds.compress(TRANSFER_SYNTAX[compression], generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
