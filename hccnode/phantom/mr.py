"""MRI series plans (paper 003): fat-suppressed T2-weighted TSE, DWI (b 50/800 by default) and the ADC map,
for a baseline and a follow-up study of the same patient.

Units: T2 and DWI in arbitrary signal units (erector spinae T2 signal = 300); the ADC map is
stored as integers in 10⁻⁶ mm²/s (= µm²/s, UCUM "um2/s"), as most vendors do, computed from the
noisy DWI images by a log-linear fit like a scanner's. Noise is Rician (magnitude of complex
Gaussian noise with σ = noise_sd), so signal stays positive.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import MRImageStorage

from hccnode.phantom import dicomio
from hccnode.phantom.anatomy import Label, Tumor
from hccnode.phantom.enhancement import Tissue, lookup, tissue_table
from hccnode.phantom.images import TABLE_Z_MM, Grid, Image, SeriesPlan
from hccnode.phantom.multienergy import code
from hccnode.phantom.spec import StudySpec

MUSCLE_T2_SIGNAL = 300.0
MUSCLE_DWI_S0 = 250.0
ADC_MAX = 4000.0
# Vendor private b-value conventions (as read by common converters): (group, element, creator, VR).
PRIVATE_BVALUE = {
    "siemens": (0x0019, 0x0C, "SIEMENS MR HEADER", "IS"),
    "ge": (0x0043, 0x39, "GEMS_PARM_01", "IS"),          # value 1 = b-value + 1e9, then 0, 0, 0
    "philips": (0x2001, 0x03, "Philips Imaging DD 001", "FL"),
}


def _rician(seed, study, key, k, b, signal: np.ndarray, sd: float) -> np.ndarray:
    if sd <= 0:
        return signal
    rng = np.random.default_rng(dicomio.rng_key(seed, study, key, k, b))
    n = rng.normal(0.0, sd, (2,) + signal.shape)
    return np.hypot(signal + n[0], n[1]).astype(np.float32)


def dwi_signal(tissues: dict[int, Tissue], labels: np.ndarray, b: float) -> np.ndarray:
    s0 = {k: MUSCLE_DWI_S0 * t.t2_ratio for k, t in tissues.items()}
    adc = {k: t.adc for k, t in tissues.items()}
    return lookup(labels, s0) * np.exp(-b * lookup(labels, adc) * 1e-6)


def adc_fit(images: list[np.ndarray], b_values: list[float], floor: float) -> np.ndarray:
    """Log-linear least-squares ADC (10⁻⁶ mm²/s) from DWI images; 0 where any signal is below `floor`."""
    b = np.asarray(b_values, dtype=np.float64)
    logs = np.log(np.maximum(np.stack(images).astype(np.float64), 1e-6))
    bc = b - b.mean()
    slope = np.tensordot(bc, logs - logs.mean(axis=0), axes=1) / (bc**2).sum()
    adc = np.clip(-slope * 1e6, 0.0, ADC_MAX)
    adc[np.min(np.stack(images), axis=0) < floor] = 0.0
    return adc


def mr_studies(spec: StudySpec, style: dict, grid: Grid):
    """(study context, plans, ROI truth) for the baseline and follow-up MR studies."""
    from hccnode.phantom.generate import make_tumors, study_context, tumor_tissues

    out = []
    for i, label in enumerate(("baseline", "followup")):
        factor = 1.0 if i == 0 else spec.followup_diameter_factor
        tumors = make_tumors(spec, factor)
        tt = tumor_tissues(spec, len(tumors), spec.tumor_t2_ratio[i], spec.tumor_adc[i])
        tissues = tissue_table(spec.hct, spec.liver_ecv, tt)
        start = dicomio.study_start(spec.seed, week=spec.followup_weeks * i)
        ctx = study_context(spec, label, start, "MR LIVER")
        motion = spec.motion.get("followup") if i == 1 else None
        plans = _plans(spec, style, tissues, tumors, start, label, motion)
        out.append((ctx, plans, mr_truth(spec, tissues, tumors)))
    return out


def _plans(spec, style, tissues, tumors, start: datetime, study_label: str, study_motion) -> list[SeriesPlan]:
    seed, sd, bvals = spec.seed, spec.noise_sd, list(spec.b_values)
    t2 = {k: MUSCLE_T2_SIGNAL * t.t2_ratio for k, t in tissues.items()}
    b_text = "_".join(f"{b:g}" for b in bvals)
    slices = range(spec.slices)

    def t2_values(labels, image):
        return _rician(seed, study_label, "t2", image.slice_index, 0, lookup(labels, t2), sd)

    def dwi_values(labels, image):
        b = image.params["b"]
        return _rician(seed, study_label, "dwi", image.slice_index, b, dwi_signal(tissues, labels, b), sd)

    def adc_values(labels, image):
        imgs = [dwi_values(labels, Image(image.slice_index, {"b": b})) for b in bvals]
        return adc_fit(imgs, bvals, floor=3.0 * sd if sd > 0 else 1.0)

    def folder(number, key):
        send = ("send1" if key == "mr_t2" else "send2") if spec.split else ""
        return "/".join(x for x in (send, study_label, f"{number:04d}_{key}") if x)

    common = dict(tumors=tumors, slope=1.0, intercept=0.0, signed=False)
    plans = [
        SeriesPlan(key="mr_t2", kind="mr_t2", number=3, description=style["desc"]["t2"], acquired=start,
                   header=_mr_header(spec, style, "t2"), values=t2_values,
                   images=[Image(k) for k in slices], phase="t2", motion=spec.motion.get("t2") or study_motion,
                   **common),
        SeriesPlan(key="mr_dwi", kind="mr_dwi", number=4, description=style["desc"]["dwi"].format(b=b_text),
                   acquired=start + timedelta(seconds=300),
                   header=_mr_header(spec, style, "dwi"),
                   instance_header=_b_value_header(spec.vendor if style.get("private_bvalue") else ""), values=dwi_values,
                   images=[Image(k, {"b": b}) for b in bvals for k in slices], phase="dwi",
                   motion=spec.motion.get("dwi") or study_motion, extra={"b_values": bvals}, **common),
        SeriesPlan(key="mr_adc", kind="mr_adc", number=5, description=style["desc"]["adc"].format(b=b_text),
                   acquired=start + timedelta(seconds=300), content_delay_s=5.0,
                   header=_mr_header(spec, style, "adc"),
                   values=adc_values, images=[Image(k) for k in slices], phase="adc",
                   motion=spec.motion.get("dwi") or study_motion,
                   extra={"units": "1e-6 mm2/s", "b_values": bvals}, **common),
    ]
    for p in plans:
        p.folder = folder(p.number, p.key)
    return plans


def _mr_header(spec: StudySpec, style: dict, what: str):
    def header(ds: Dataset) -> None:
        ds.SOPClassUID = MRImageStorage
        ds.Modality = "MR"
        ds.ImageType = list(style["mr_image_type"][what])
        ds.Manufacturer = style["manufacturer"]
        ds.ManufacturerModelName = style["mr_model"]
        ds.SoftwareVersions = style["software"]
        ds.StationName = "PHANTOMMR"
        ds.BodyPartExamined = "ABDOMEN"
        ds.MagneticFieldStrength = 3.0
        ds.ImagingFrequency = 123.25
        ds.ImagedNucleus = "1H"
        ds.MRAcquisitionType = "2D"
        ds.SpacingBetweenSlices = spec.spacing
        ds.NumberOfAverages = 1
        ds.AcquisitionNumber = 1
        if what == "t2":
            ds.ProtocolName = "T2 TSE FS"
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = ["SK", "SP"]
            ds.ScanOptions = "FS"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.FlipAngle = 5000.0, 85.0, 17, 140.0
            ds.WindowCenter, ds.WindowWidth = 400.0, 900.0
        else:
            ds.ProtocolName = "DWI"
            ds.ScanningSequence = ["EP", "SE"]
            ds.SequenceVariant = ["SK", "SP"]
            ds.ScanOptions = "FS"
            ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.FlipAngle = 3100.0, 55.0, 1, 90.0
            ds.WindowCenter, ds.WindowWidth = (1200.0, 2400.0) if what == "adc" else (200.0, 500.0)
        if what == "adc":
            ds.DerivationDescription = "ADC from log-linear fit of the DWI b-values, 10^-6 mm2/s"
            m = Dataset()
            m.RealWorldValueFirstValueMapped = 0
            m.RealWorldValueLastValueMapped = 65535
            m.RealWorldValueIntercept = 0.0
            m.RealWorldValueSlope = 1.0
            m.LUTExplanation = "ADC 10^-6 mm2/s"
            m.LUTLabel = "ADC"
            m.MeasurementUnitsCodeSequence = Sequence([code("um2/s", "UCUM", "square micrometer per second")])
            ds.RealWorldValueMappingSequence = Sequence([m])
    return header


def _b_value_header(vendor: str):
    def per_image(ds: Dataset, image: Image) -> None:
        b = image.params["b"]
        ds.DiffusionBValue = float(b)
        if vendor in PRIVATE_BVALUE:
            group, elem, creator, vr = PRIVATE_BVALUE[vendor]
            block = ds.private_block(group, creator, create=True)
            if vendor == "ge":
                block.add_new(elem, vr, [int(b) + 1_000_000_000, 0, 0, 0])
            else:
                block.add_new(elem, vr, int(b) if vr == "IS" else float(b))
    return per_image


def mr_truth(spec: StudySpec, tissues: dict[int, Tissue], tumors: list[Tumor]) -> dict:
    from hccnode.phantom.generate import ROI_CENTERS

    rois = {}
    names = {"liver": Label.LIVER, "erector_spinae": Label.ERECTOR_SPINAE, "spleen": Label.SPLEEN,
             "aorta": Label.AORTA}
    for i in range(len(tumors)):
        names[tissues[Label.TUMOR + i].name] = Label.TUMOR + i
    for name, lab in names.items():
        t = tissues[lab]
        r = {"label": int(lab), "t2_signal": MUSCLE_T2_SIGNAL * t.t2_ratio, "t2_ratio": t.t2_ratio, "adc": t.adc,
             "dwi_signal": {f"{b:g}": float(dwi_signal({0: t}, np.zeros(1, np.uint8), b)[0]) for b in spec.b_values}}
        if name in ROI_CENTERS:
            r["roi_centers_patient_mm"] = [[x, y, TABLE_Z_MM] for x, y in ROI_CENTERS[name]]
        rois[name] = r
    for i, tm in enumerate(tumors):
        rois[tissues[Label.TUMOR + i].name].update(
            diameter_mm=tm.diameter_mm, volume_ml=tm.volume_ml,
            center_patient_mm=[tm.center_mm[0], tm.center_mm[1], tm.center_mm[2] + TABLE_Z_MM])
    return rois
