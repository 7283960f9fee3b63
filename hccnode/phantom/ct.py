"""CT series plans: four-phase single-energy CECT and dual-energy derived series (iodine, VMI, VNC)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage

from hccnode.phantom import dicomio, multienergy
from hccnode.phantom.anatomy import Tumor
from hccnode.phantom.enhancement import (CONVENTIONAL_KEV, PHASES, Tissue, enhancement_hu,
                                         iodine_hu_per_mg_ml, lookup)
from hccnode.phantom.images import Image, SeriesPlan
from hccnode.phantom.spec import ENHANCED_PHASES, StudySpec

UNENHANCED_BEFORE_BOLUS_S = 120.0
DERIVED_AFTER_S = 300.0          # post-processing creates DECT series a few minutes later
CONTRAST = dict(agent="IOHEXOL 350", volume_ml=100.0, flow_ml_s=3.0, concentration_mg_ml=350.0)


def phase_values(tissues: dict[int, Tissue], phase: str, delay_s: float | None, hct: float) -> dict[str, dict[int, float]]:
    """Noise-free per-label values of one phase: HU, ΔHU, iodine mg/mL."""
    d = {k: (enhancement_hu(t, phase, delay_s or 0.0, hct)) for k, t in tissues.items()}
    k70 = iodine_hu_per_mg_ml(CONVENTIONAL_KEV)
    return {"hu": {k: tissues[k].hu0 + d[k] for k in tissues}, "delta_hu": d,
            "iodine": {k: d[k] / k70 for k in tissues}}


def acquisition_times(spec: StudySpec, bolus: datetime) -> dict[str, datetime]:
    """Acquisition start of each phase; shuffled_times rotates the enhanced phases' times (a header fault)."""
    t = {"unenhanced": bolus - timedelta(seconds=UNENHANCED_BEFORE_BOLUS_S)}
    for p in ENHANCED_PHASES:
        t[p] = bolus + timedelta(seconds=spec.delay(p))
    if "shuffled_times" in spec.header_faults:
        a, pv, eq = (t[p] for p in ENHANCED_PHASES)
        t["arterial"], t["portal"], t["equilibrium"] = eq, a, pv
    return t


def _noise(seed: int, label: str, key: str, image: Image, shape, sd: float) -> np.ndarray:
    if sd <= 0:
        return np.zeros(shape, dtype=np.float32)
    rng = np.random.default_rng(dicomio.rng_key(seed, label, key, image.slice_index))
    return rng.normal(0.0, sd, shape).astype(np.float32)


def ct_plans(spec: StudySpec, style: dict, tissues: dict[int, Tissue], tumors: list[Tumor], bolus: datetime,
             study_label: str) -> list[SeriesPlan]:
    """All CT series of a cect / dect study, in acquisition order."""
    times = acquisition_times(spec, bolus)
    thk = f"{spec.slice_thickness_mm:g}"
    images = [Image(k) for k in range(spec.slices)]
    plans: list[SeriesPlan] = []
    for i, phase in enumerate(PHASES):
        delay = spec.delay(phase)
        vals = phase_values(tissues, phase, delay, spec.hct)
        number = i + 2
        common = dict(phase=phase, motion=spec.motion.get(phase), tumors=tumors, images=images)

        def conventional(labels, image, hu=vals["hu"], key=f"ct_{phase}"):
            return lookup(labels, hu) + _noise(spec.seed, study_label, key, image, labels.shape, spec.noise_sd)

        plans.append(SeriesPlan(
            key=f"ct_{phase}", kind=f"ct_{phase}", number=number,
            description=style["desc"][phase].format(thk=thk), acquired=times[phase],
            header=_ct_header(spec, style, phase, bolus, ["ORIGINAL", "PRIMARY", "AXIAL"], "HU",
                              style["ct_rescale_intercept"], 1.0, derived=False),
            values=conventional, slope=1.0, intercept=style["ct_rescale_intercept"],
            signed=bool(style["ct_pixel_representation"]), extra={"delay_s": delay}, **common))
        if spec.kind != "dect" or phase not in spec.dect_phases:
            continue
        plans.extend(_dect_plans(spec, style, phase, vals, thk, number, times[phase], bolus, study_label, common))
    for p in plans:  # a split study goes out as two sends: unenhanced + arterial, then the rest
        send = ("send1" if p.phase in ("unenhanced", "arterial") else "send2") if spec.split else ""
        p.folder = "/".join(x for x in (send, study_label, f"{p.number:04d}_{p.key}") if x)
    return plans


def _dect_plans(spec, style, phase, vals, thk, number, acquired, bolus, study_label, common) -> list[SeriesPlan]:
    k70 = iodine_hu_per_mg_ml(CONVENTIONAL_KEV)
    hu0 = {k: vals["hu"][k] - vals["delta_hu"][k] for k in vals["hu"]}
    plans = []
    slope, intercept = style["iodine_slope"], style["iodine_intercept"]

    def iodine(labels, image):
        return lookup(labels, vals["iodine"]) + _noise(spec.seed, study_label, f"iodine_{phase}", image,
                                                       labels.shape, spec.noise_sd / k70)

    plans.append(SeriesPlan(
        key=f"dect_iodine_{phase}", kind="dect_iodine", number=number * 100 + 1,
        description=style["desc"]["iodine"].format(thk=thk, phase=phase.capitalize()), acquired=acquired,
        content_delay_s=DERIVED_AFTER_S,
        header=_ct_header(spec, style, phase, bolus, style["image_type"]["iodine"], style["iodine_rescale_type"],
                          intercept, slope, derived=True, window=(2.0, 8.0), acquired=acquired),
        values=iodine, slope=slope, intercept=intercept, signed=True, extra={"units": "mg/mL"}, **common))
    for j, kev in enumerate(spec.vmi_kev):
        kk = iodine_hu_per_mg_ml(kev)
        hu = {k: hu0[k] + vals["iodine"][k] * kk for k in hu0}

        def vmi(labels, image, hu=hu, kev=kev, kk=kk):
            sd = spec.noise_sd * float(np.sqrt(kk / k70))  # low keV images are noisier
            return lookup(labels, hu) + _noise(spec.seed, study_label, f"vmi{kev:g}_{phase}", image, labels.shape, sd)

        plans.append(SeriesPlan(
            key=f"dect_vmi{kev:g}_{phase}", kind="dect_vmi", number=number * 100 + 2 + j,
            description=style["desc"]["vmi"].format(thk=thk, kev=f"{kev:g}", phase=phase.capitalize()),
            acquired=acquired, content_delay_s=DERIVED_AFTER_S,
            header=_ct_header(spec, style, phase, bolus, style["image_type"]["vmi"], "HU",
                              style["ct_rescale_intercept"], 1.0, derived=True, kev=kev, acquired=acquired),
            values=vmi, slope=1.0, intercept=style["ct_rescale_intercept"],
            signed=bool(style["ct_pixel_representation"]), extra={"kev": kev}, **common))
    if spec.vnc:
        def vnc(labels, image):
            return lookup(labels, hu0) + _noise(spec.seed, study_label, f"vnc_{phase}", image, labels.shape,
                                                spec.noise_sd)

        plans.append(SeriesPlan(
            key=f"dect_vnc_{phase}", kind="dect_vnc", number=number * 100 + 2 + len(spec.vmi_kev),
            description=style["desc"]["vnc"].format(thk=thk, phase=phase.capitalize()), acquired=acquired,
            content_delay_s=DERIVED_AFTER_S,
            header=_ct_header(spec, style, phase, bolus, style["image_type"]["vnc"], "HU",
                              style["ct_rescale_intercept"], 1.0, derived=True, acquired=acquired),
            values=vnc, slope=1.0, intercept=style["ct_rescale_intercept"],
            signed=bool(style["ct_pixel_representation"]), **common))
    return plans


def _ct_header(spec: StudySpec, style: dict, phase: str, bolus: datetime, image_type: list[str], rescale_type: str,
               intercept: float, slope: float, derived: bool, window=(50.0, 400.0), kev: float | None = None,
               acquired: datetime | None = None):
    def header(ds: Dataset) -> None:
        ds.SOPClassUID = CTImageStorage
        ds.Modality = "CT"
        ds.ImageType = list(image_type)
        ds.Manufacturer = style["manufacturer"]
        ds.ManufacturerModelName = style["ct_model"]
        ds.SoftwareVersions = style["software"]
        ds.StationName = "PHANTOMCT"
        ds.BodyPartExamined = "ABDOMEN"
        ds.ProtocolName = "LIVER 4 PHASE" if spec.kind == "cect" else "LIVER DE 4 PHASE"
        ds.KVP = "" if derived else 120  # derived DE images come from two kVp values
        ds.AcquisitionNumber = PHASES.index(phase) + 1
        ds.ReconstructionDiameter = round(spec.pixel_mm * spec.matrix, 2)
        ds.ConvolutionKernel = style["kernel"]
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = rescale_type
        ds.WindowCenter, ds.WindowWidth = window
        if derived and style.get("multienergy_tags"):
            multienergy.add_to_image(ds, image_type[3], rescale_type, slope, intercept,
                                     bool(style["ct_pixel_representation"]) or rescale_type == "MGML", acquired, kev)
        if derived:
            ds.DerivationDescription = (f"Virtual monoenergetic image at {kev:g} keV" if kev is not None else
                                        "Iodine material density, mg/mL" if rescale_type == "MGML" else
                                        "Virtual unenhanced image (iodine removed)")
        if phase != "unenhanced":
            ds.ContrastBolusAgent = CONTRAST["agent"]
            ds.ContrastBolusRoute = "IV"
            ds.ContrastBolusVolume = CONTRAST["volume_ml"]
            ds.ContrastBolusStartTime = dicomio.dicom_time(bolus)
            ds.ContrastFlowRate = CONTRAST["flow_ml_s"]
            ds.ContrastFlowDuration = round(CONTRAST["volume_ml"] / CONTRAST["flow_ml_s"], 1)
            ds.ContrastBolusIngredient = "IODINE"
            ds.ContrastBolusIngredientConcentration = CONTRAST["concentration_mg_ml"]
    return header
