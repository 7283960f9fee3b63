"""Plain CT series for network and storage tests (the science tests use hccnode.phantom)."""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "NETTEST^PHI^SENTINEL"
PATIENT_ID = "PHI-SENTINEL-4711"


def ct_series(out: Path, n: int = 10, size: int = 64, seed: int = 0, study_uid: str | None = None,
              series_number: int = 1, description: str = "TEST ABDOMEN", body_part: str = "ABDOMEN") -> list[Path]:
    """Write `n` single-frame CT instances of `size`² pixels to `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid(entropy_srcs=[f"study-{seed}"])
    series_uid = generate_uid(entropy_srcs=[f"series-{seed}-{series_number}-{study_uid}"])
    frame_uid = generate_uid(entropy_srcs=[f"frame-{seed}"])
    paths = []
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[f"sop-{series_uid}-{i}"])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20260101"
        ds.StudyTime = "080000"
        t = datetime.datetime(2026, 1, 1, 8, 0, 0) + datetime.timedelta(seconds=series_number * 60)
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = t.strftime("%H%M%S")
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.Modality = "CT"
        ds.Manufacturer = "hccnode tests"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = i + 1
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientPosition = "FFS"
        ds.ImagePositionPatient = [-size / 2, -size / 2, -float(i) * 2.5]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 2.5
        ds.PixelSpacing = [1.0, 1.0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.PositionReferenceIndicator = ""
        ds.AcquisitionNumber = 1
        ds.BodyPartExamined = body_part
        ds.PixelData = rng.integers(900, 1200, (size, size), dtype=np.uint16).tobytes()
        p = out / f"ct{series_number:02d}_{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths
