"""DICOM multi-energy CT attributes (PS3.3 Multi-energy CT Image module, Supplement 188).

Used by the "standard" vendor style: Multi-energy CT Acquisition = YES, ImageType value 4
(VMI / MAT_SPECIFIC / MAT_REMOVED), an acquisition description (one source switching between two
kVp, one energy-integrating detector, two paths), the per-image characteristics (monoenergetic
energy equivalent for VMIs, the material for iodine maps) and a Real World Value Mapping with
UCUM units, so a reader can tell an iodine map in mg/ml from an image in HU without vendor rules.

Checked (2026-12) against:
- PS3.3 C.8.2.1.1.1 Image Type Value 4 Defined Terms for multi-energy CT (VMI, MAT_SPECIFIC,
  MAT_REMOVED, MAT_FRACTIONAL, EFF_ATOMIC_NUM, ELECTRON_DENSITY, MAT_MODIFIED, MAT_VALUE_BASED) and
  C.8.15.3.12 (Monoenergetic Energy Equivalent (0018,937C), keV, required when Value 4 is VMI), as
  reproduced at dicom.innolitics.com and in the defined-term tables of dicom3tools' dciodvfy
  (which also lists SWITCHING_SOURCE / CONSTANT_SOURCE, INTEGRATING / MULTILAYER / PHOTON_COUNTING
  and PROJECTION_BASED / IMAGE_BASED / HYBRID used below).
- Every attribute keyword written here exists in pydicom 3.0.2's data dictionary (e.g.
  MultienergyCTAcquisition (0018,9361), MultienergyCTCharacteristicsSequence (0018,9364),
  MaterialCodeSequence (0018,937D), DecompositionMaterialSequence (0018,9381)).
- Codes: CID 300 "Multi-energy Relevant Material" (SCT 44588005 Iodine, SCT 11713004 Water) and
  CID 301 "Multi-energy Material Unit" (UCUM "mg/ml", UCUM "[hnsf'U]" Hounsfield unit), as in
  pydicom.sr's copy of PS3.16.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

IODINE = ("44588005", "SCT", "Iodine")
WATER = ("11713004", "SCT", "Water")
# CID 301 Multi-energy Material Unit (PS3.16) spells the concentration unit "mg/ml".
UNITS = {"HU": ("[hnsf'U]", "UCUM", "Hounsfield unit"), "MGML": ("mg/ml", "UCUM", "mg/ml")}


def code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


KVPS = (80, 140)  # the two energies of the phantom's fast kVp switching acquisition


def ct_acquisition_details(path: int | None = None) -> Dataset:
    d = Dataset()
    if path is not None:
        d.ReferencedPathIndex = path
    d.RotationDirection = "CW"
    d.RevolutionTime = 0.5
    d.SingleCollimationWidth = 0.625
    d.TotalCollimationWidth = 40.0
    d.TableHeight = 150.0
    d.GantryDetectorTilt = 0.0
    d.DataCollectionDiameter = 500.0
    return d


def ct_geometry(path: int | None = None) -> Dataset:
    d = Dataset()
    if path is not None:
        d.ReferencedPathIndex = path
    d.DistanceSourceToDetector = 1040.0
    d.DistanceSourceToDataCollectionCenter = 570.0
    return d


def ct_exposure(source: int | None = None) -> Dataset:
    d = Dataset()
    if source is not None:
        d.ReferencedXRaySourceIndex = source
    d.ExposureTimeInms = 500.0
    d.XRayTubeCurrentInmA = 300.0
    d.ExposureInmAs = 150.0
    d.ExposureModulationType = "NONE"
    d.CTDIvol = 10.0
    d.CTDIPhantomTypeCodeSequence = Sequence([code("113691", "DCM", "IEC Body Dosimetry Phantom")])
    return d


def ct_xray_details(kvp: float) -> Dataset:
    d = Dataset()
    d.KVP = kvp
    d.FocalSpots = [1.0]
    d.FilterType = "SHAPED"
    d.FilterMaterial = "ALUMINUM"
    return d


def acquisition_sequence(start: datetime) -> Sequence:
    """One fast-kVp-switching source, one detector, a low and a high energy path."""
    item = Dataset()
    item.MultienergyAcquisitionDescription = "Synthetic phantom: fast kVp switching 80/140 kVp"
    end = start + timedelta(seconds=4)
    sources = []
    for i, _ in enumerate(KVPS, start=1):
        s = Dataset()
        s.XRaySourceIndex = i
        s.XRaySourceID = "TUBE1"
        s.MultienergySourceTechnique = "SWITCHING_SOURCE"
        s.SourceStartDateTime = start.strftime("%Y%m%d%H%M%S.%f")
        s.SourceEndDateTime = end.strftime("%Y%m%d%H%M%S.%f")
        s.SwitchingPhaseNumber = i
        sources.append(s)
    item.MultienergyCTXRaySourceSequence = Sequence(sources)
    det = Dataset()
    det.XRayDetectorIndex = 1
    det.XRayDetectorID = "DET1"
    det.MultienergyDetectorType = "INTEGRATING"
    item.MultienergyCTXRayDetectorSequence = Sequence([det])
    paths = []
    for i, _ in enumerate(KVPS, start=1):
        p = Dataset()
        p.MultienergyCTPathIndex = i
        p.ReferencedXRaySourceIndex = i
        p.ReferencedXRayDetectorIndex = 1
        paths.append(p)
    item.MultienergyCTPathSequence = Sequence(paths)
    idx = range(1, len(KVPS) + 1)
    item.CTExposureSequence = Sequence([ct_exposure(i) for i in idx])
    item.CTXRayDetailsSequence = Sequence([ct_xray_details(k) for k in KVPS])
    item.CTAcquisitionDetailsSequence = Sequence([ct_acquisition_details(i) for i in idx])
    item.CTGeometrySequence = Sequence([ct_geometry(i) for i in idx])
    return Sequence([item])


def processing_sequence(material: tuple[str, str, str]) -> Sequence:
    item = Dataset()
    item.DecompositionMethod = "PROJECTION_BASED"
    item.DecompositionDescription = "Synthetic phantom: two-material (water, iodine) decomposition"
    m = Dataset()
    m.MaterialCodeSequence = Sequence([code(*material)])
    item.DecompositionMaterialSequence = Sequence([m])
    return Sequence([item])


def characteristics_sequence(kev: float) -> Sequence:
    """Multi-energy characteristics of a virtual monoenergetic image: its keV."""
    item = Dataset()
    item.MonoenergeticEnergyEquivalent = float(kev)
    return Sequence([item])


def real_world_value_mapping(units: str, slope: float, intercept: float, first: int, last: int,
                             label: str) -> Sequence:
    item = Dataset()
    item.RealWorldValueFirstValueMapped = first
    item.RealWorldValueLastValueMapped = last
    item.RealWorldValueIntercept = float(intercept)
    item.RealWorldValueSlope = float(slope)
    item.LUTExplanation = label
    item.LUTLabel = label[:16]
    item.MeasurementUnitsCodeSequence = Sequence([code(*UNITS[units])])
    return Sequence([item])


def add_to_image(ds: Dataset, value4: str, units: str, slope: float, intercept: float, signed: bool,
                 acquired: datetime, kev: float | None = None) -> None:
    """Add the Multi-energy CT Image module attributes to a single-frame CT image."""
    ds.MultienergyCTAcquisition = "YES"
    ds.ImageType = list(ds.ImageType)[:3] + [value4]
    ds.MultienergyCTAcquisitionSequence = acquisition_sequence(acquired)
    if value4 == "VMI":
        ds.MultienergyCTCharacteristicsSequence = characteristics_sequence(kev)
    else:  # MAT_SPECIFIC (iodine map) or MAT_REMOVED (virtual unenhanced): the material is iodine
        ds.MultienergyCTProcessingSequence = processing_sequence(IODINE)
    first, last = (-32768, 32767) if signed else (0, 65535)
    label = {"HU": "HU", "MGML": "Iodine mg/mL"}[units]
    ds.RealWorldValueMappingSequence = real_world_value_mapping(units, slope, intercept, first, last, label)
