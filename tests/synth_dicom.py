"""Small DICOM objects built in memory for tests (no PHI; fixed dummy identifiers)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _base(sop_class, series_uid, for_uid, study_uid):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = for_uid
    ds.SeriesNumber = 3
    ds.Modality = "CT"
    ds.PatientID = "TEST"
    ds.PatientName = "Test^Phantom"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "hccnode-test"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def stored(values_hu, slope, intercept):
    return np.round((np.asarray(values_hu, float) - intercept) / slope).astype(np.int16)


def ct_series(hu, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), orientation=AXIAL,
              slope=1.0, intercept=-1024.0, series_uid=None, study_uid=None, for_uid=None):
    """Single-frame CT slices of `hu` (z, y, x); spacing (z, y, x) mm; slices along row x col."""
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    for_uid = for_uid or generate_uid()
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row, col)
    out = []
    for k, plane in enumerate(hu):
        ds = _base(CTImageStorage, series_uid, for_uid, study_uid)
        ds.InstanceNumber = len(hu) - k  # deliberately not in spatial order
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[0] * normal]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = plane.shape
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = stored(plane, slope, intercept).tobytes()
        out.append(ds)
    return out


def enhanced_ct(hu, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), orientation=AXIAL,
                slopes=None, intercepts=None, frame_order=None):
    """One Enhanced CT object; per-frame position and Pixel Value Transformation (slope/intercept
    per frame), shared orientation and pixel measures. `frame_order` permutes the stored frames."""
    n = len(hu)
    slopes = slopes or [1.0] * n
    intercepts = intercepts or [-1024.0] * n
    order = list(frame_order) if frame_order is not None else list(range(n))
    ds = _base(EnhancedCTImageStorage, generate_uid(), generate_uid(), generate_uid())
    ds.NumberOfFrames = n
    ds.Rows, ds.Columns = hu.shape[1:]
    shared = Dataset()
    ori = Dataset()
    ori.ImageOrientationPatient = list(orientation)
    shared.PlaneOrientationSequence = Sequence([ori])
    meas = Dataset()
    meas.PixelSpacing = [spacing[1], spacing[2]]
    meas.SliceThickness = spacing[0]
    shared.PixelMeasuresSequence = Sequence([meas])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    normal = np.cross(orientation[:3], orientation[3:])
    items, planes = [], []
    for k in order:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[0] * normal]
        item.PlanePositionSequence = Sequence([pos])
        pvt = Dataset()
        pvt.RescaleSlope = slopes[k]
        pvt.RescaleIntercept = intercepts[k]
        pvt.RescaleType = "HU"
        item.PixelValueTransformationSequence = Sequence([pvt])
        items.append(item)
        planes.append(stored(hu[k], slopes[k], intercepts[k]))
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    ds.PixelData = np.stack(planes).tobytes()
    return ds
