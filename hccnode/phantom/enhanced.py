"""Enhanced CT Image Storage: one multi-frame instance per series (PS3.3 A.38).

The per-series classic header (from the CT plan) is the source of the values; this module moves
them into the shared and per-frame functional groups. Pixel data of the series is held in
memory once (frames × rows × columns × 2 bytes), which is why the default is single-frame.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import EnhancedCTImageStorage

from hccnode.phantom import dicomio, multienergy
from hccnode.phantom.anatomy import label_slice
from hccnode.phantom.images import Grid, SeriesPlan, series_template, stored

# Patient, study, series, equipment and pixel description attributes copied as they are.
KEEP = ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
        "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
        "StudyDescription", "InstitutionName", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
        "SeriesDate", "SeriesTime", "PatientPosition", "FrameOfReferenceUID", "PositionReferenceIndicator",
        "Modality", "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "StationName", "BodyPartExamined",
        "ProtocolName", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
        "BitsStored", "HighBit", "PixelRepresentation", "AcquisitionNumber", "MultienergyCTAcquisition")


def _item(**kw) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def _code(c) -> Dataset:
    return multienergy.code(c.value, c.scheme_designator, c.meaning)


def enhanced_dataset(plan: SeriesPlan, study: dict, grid: Grid, seed: int) -> Dataset:
    src = series_template(plan, study, grid, seed)
    ds = Dataset()
    for kw in KEEP:
        if kw in src:
            setattr(ds, kw, src[kw].value)
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = dicomio.uid(seed, study["label"], plan.key, "enhanced")
    # Enhanced image types have exactly four values; value 2 is PRIMARY, value 3 the image flavor.
    it = list(src.ImageType)
    ds.ImageType = [it[0], "PRIMARY", "VOLUME", it[3] if len(it) > 3 else "NONE"]
    if "MultienergyCTAcquisitionSequence" in src:  # Enhanced Multi-energy CT Acquisition module
        acq = src.MultienergyCTAcquisitionSequence[0]
        for kw in ("MultienergyCTXRaySourceSequence", "MultienergyCTXRayDetectorSequence", "MultienergyCTPathSequence"):
            setattr(ds, kw, acq[kw].value)
    ds.DeviceSerialNumber = "PHANTOM0001"
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(plan.images)
    acquired = plan.acquired
    content = acquired + timedelta(seconds=plan.content_delay_s)
    ds.ContentDate, ds.ContentTime = dicomio.dicom_date(content), dicomio.dicom_time(content)
    ds.AcquisitionDateTime = acquired.strftime("%Y%m%d%H%M%S.%f")
    ds.AcquisitionDuration = 4.0
    ds.PixelPresentation, ds.VolumetricProperties, ds.VolumeBasedCalculationTechnique = "MONOCHROME", "VOLUME", "NONE"
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = Sequence([])
    # dimensions: one stack, frames ordered by position in the stack
    org = dicomio.uid(seed, study["label"], plan.key, "dimension-organization")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=org)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionIndexPointer=0x00209056, FunctionalGroupPointer=0x00209111, DimensionOrganizationUID=org,
              DimensionDescriptionLabel="Stack ID"),
        _item(DimensionIndexPointer=0x00209057, FunctionalGroupPointer=0x00209111, DimensionOrganizationUID=org,
              DimensionDescriptionLabel="In-Stack Position Number")])
    contrast = "ContrastBolusAgent" in src
    if contrast:
        profile = _item(ContrastBolusVolume=src.ContrastBolusVolume, ContrastBolusStartTime=src.ContrastBolusStartTime,
                        ContrastFlowRate=src.ContrastFlowRate, ContrastFlowDuration=src.ContrastFlowDuration)
        agent = _code(codes.SCT.Iohexol)
        agent.ContrastBolusAgentNumber = 1
        agent.ContrastBolusAdministrationRouteSequence = Sequence([_code(codes.SCT.IntravenousRoute)])
        agent.ContrastBolusIngredientCodeSequence = Sequence([_code(codes.SCT.Iodine)])
        agent.ContrastBolusVolume = src.ContrastBolusVolume
        agent.ContrastBolusIngredientConcentration = src.ContrastBolusIngredientConcentration
        agent.ContrastBolusIngredientOpaque = "YES"
        agent.ContrastAdministrationProfileSequence = Sequence([profile])
        ds.ContrastBolusAgentSequence = Sequence([agent])
    ds.SharedFunctionalGroupsSequence = Sequence([_shared(src, plan, grid, ds.ImageType, contrast, seed, study)])
    return ds


def _shared(src: Dataset, plan: SeriesPlan, grid: Grid, image_type, contrast: bool, seed: int, study: dict) -> Dataset:
    sh = Dataset()
    sh.PixelMeasuresSequence = Sequence([_item(PixelSpacing=src.PixelSpacing, SliceThickness=src.SliceThickness,
                                               SpacingBetweenSlices=grid.spacing_mm)])
    sh.PlaneOrientationSequence = Sequence([_item(ImageOrientationPatient=src.ImageOrientationPatient)])
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = Sequence([_code(codes.SCT.Abdomen)])
    anatomy.FrameLaterality = "U"
    sh.FrameAnatomySequence = Sequence([anatomy])
    sh.FrameVOILUTSequence = Sequence([_item(WindowCenter=src.WindowCenter, WindowWidth=src.WindowWidth)])
    sh.CTImageFrameTypeSequence = Sequence([_item(FrameType=list(image_type), PixelPresentation="MONOCHROME",
                                                  VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE")])
    sh.CTAcquisitionTypeSequence = Sequence([_item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO",
                                                   FluoroscopyFlag="NO")])
    sh.CTTableDynamicsSequence = Sequence([_item(TableSpeed=78.7, TableFeedPerRotation=39.4, SpiralPitchFactor=0.984)])
    sh.CTReconstructionSequence = Sequence([_item(
        ReconstructionAlgorithm="ITERATIVE", ConvolutionKernel=src.ConvolutionKernel, ConvolutionKernelGroup="SOFT_TISSUE",
        ReconstructionDiameter=src.ReconstructionDiameter, ReconstructionPixelSpacing=src.PixelSpacing,
        ReconstructionAngle=360.0, ImageFilter="NONE")])
    if "MultienergyCTAcquisitionSequence" not in src:
        sh.CTAcquisitionDetailsSequence = Sequence([multienergy.ct_acquisition_details()])
        sh.CTGeometrySequence = Sequence([multienergy.ct_geometry()])
        sh.CTExposureSequence = Sequence([multienergy.ct_exposure()])
        sh.CTXRayDetailsSequence = Sequence([multienergy.ct_xray_details(float(src.KVP) if src.KVP else 120.0)])
    else:  # one item per energy path, as in the classic image's acquisition sequence
        acq = src.MultienergyCTAcquisitionSequence[0]
        for kw in ("CTAcquisitionDetailsSequence", "CTGeometrySequence", "CTExposureSequence", "CTXRayDetailsSequence"):
            setattr(sh, kw, acq[kw].value)
        for kw in ("MultienergyCTCharacteristicsSequence", "MultienergyCTProcessingSequence"):
            if kw in src:
                setattr(sh, kw, src[kw].value)
    sh.PixelValueTransformationSequence = Sequence([_item(RescaleIntercept=src.RescaleIntercept,
                                                          RescaleSlope=src.RescaleSlope, RescaleType=src.RescaleType)])
    if "RealWorldValueMappingSequence" in src:
        sh.RealWorldValueMappingSequence = src.RealWorldValueMappingSequence
    if contrast:
        sh.ContrastBolusUsageSequence = Sequence([_item(ContrastBolusAgentNumber=1, ContrastBolusAgentAdministered="YES",
                                                        ContrastBolusAgentDetected="YES")])
    sh.IrradiationEventIdentificationSequence = Sequence([_item(
        IrradiationEventUID=dicomio.uid(seed, study["label"], plan.phase, "irradiation"))])
    return sh


def write_enhanced_series(plan: SeriesPlan, study: dict, grid: Grid, seed: int, vessels: bool, out_dir: Path,
                          compression: str, faults: tuple[str, ...] = (), progress=None) -> None:
    ds = enhanced_dataset(plan, study, grid, seed)
    frames = np.empty((len(plan.images), grid.matrix, grid.matrix), dtype=np.int16 if plan.signed else np.uint16)
    per_frame = []
    x0, y0 = grid.origin_xy
    for n, image in enumerate(plan.images):
        k = image.slice_index
        labels = label_slice(grid.x, grid.y, grid.body_z(k), plan.tumors, vessels, plan.motion)
        frames[n] = stored(plan.values(labels, image), plan.slope, plan.intercept, plan.signed)
        z = round(grid.patient_z(k), 4)
        t = plan.acquired + timedelta(seconds=4.0 * k / max(grid.slices, 1))
        fg = Dataset()
        fg.FrameContentSequence = Sequence([_item(
            FrameReferenceDateTime=t.strftime("%Y%m%d%H%M%S.%f"), FrameAcquisitionDateTime=t.strftime("%Y%m%d%H%M%S.%f"),
            FrameAcquisitionDuration=4000.0 / max(grid.slices, 1), StackID="1", InStackPositionNumber=n + 1,
            DimensionIndexValues=[1, n + 1])])
        fg.PlanePositionSequence = Sequence([_item(ImagePositionPatient=[round(x0, 4), round(y0, 4), z])])
        fg.CTPositionSequence = Sequence([_item(TablePosition=z, DataCollectionCenterPatient=[0.0, 0.0, z],
                                                ReconstructionTargetCenterPatient=[0.0, 0.0, z])])
        per_frame.append(fg)
        if progress is not None:
            progress.update(1)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = frames.tobytes()
    if "no_description" in faults and "SeriesDescription" in ds:
        del ds.SeriesDescription
    if "no_contrast" in faults:
        for kw in ("ContrastBolusAgentSequence",):
            if kw in ds:
                del ds[kw]
        if "ContrastBolusUsageSequence" in ds.SharedFunctionalGroupsSequence[0]:
            del ds.SharedFunctionalGroupsSequence[0].ContrastBolusUsageSequence
    if "no_times" in faults and "SeriesTime" in ds:
        del ds.SeriesTime
    dicomio.save(ds, out_dir / plan.folder / "IM00001.dcm", compression)
    plan.sop_uids = [ds.SOPInstanceUID]
