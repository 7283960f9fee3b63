"""Generate a phantom study: plan the series, stream them to disk, write truth.json, return the truth."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from hccnode import RESEARCH_USE, __version__, log
from hccnode.phantom import dicomio, vendors
from hccnode.phantom.anatomy import Label, Tumor, tumor_fits_liver
from hccnode.phantom.ct import UNENHANCED_BEFORE_BOLUS_S, ct_plans, phase_values
from hccnode.phantom.enhancement import (CONVENTIONAL_KEV, DEFAULT_TISSUES, PHASES, iodine_hu_per_mg_ml,
                                         tissue_table)
from hccnode.phantom.images import TABLE_Z_MM, Grid, SeriesPlan, write_series
from hccnode.phantom.spec import SpecError, StudySpec

# Tumor centres (body mm) in the right lobe, used in order for 1, 2, 3 ... tumors.
TUMOR_CENTERS = [(-70.0, -5.0, 0.0), (-95.0, -45.0, 20.0), (-30.0, -50.0, -25.0), (-105.0, 25.0, -30.0)]
# Reference ROI centres (body x, y in mm, on the tumor's central plane): three liver ROIs as in
# paper 001 (anterior and posterior right lobe, left lateral part), aorta, both erector spinae.
ROI_CENTERS = {"liver": [(-80.0, -60.0), (-100.0, 45.0), (-5.0, -50.0)], "aorta": [(22.0, 16.0)],
               "erector_spinae": [(-36.0, 92.0), (36.0, 92.0)], "spleen": [(92.0, 48.0)], "fat": [(0.0, -105.0)]}
ROI_LABELS = {"liver": Label.LIVER, "aorta": Label.AORTA, "erector_spinae": Label.ERECTOR_SPINAE,
              "spleen": Label.SPLEEN, "portal_vein": Label.PORTAL_VEIN, "fat": Label.FAT}


@dataclass
class Truth:
    """What the phantom contains, as written to truth.json (see `as_dict`)."""

    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return self.data

    def series(self, kind: str, study: int = 0, **match) -> list[dict]:
        """Series of a study with this kind (and e.g. phase="arterial", kev=40)."""
        return [s for s in self.data["studies"][study]["series"]
                if s["kind"] == kind and all(s.get(k) == v for k, v in match.items())]

    def roi(self, name: str, study: int = 0) -> dict:
        return self.data["studies"][study]["rois"][name]


def make_tumors(spec: StudySpec, factor: float = 1.0) -> list[Tumor]:
    if len(spec.tumor_diameters_mm) > len(TUMOR_CENTERS):
        raise SpecError(f"tumor_diameters_mm: at most {len(TUMOR_CENTERS)} tumors")
    tumors = [Tumor(d * factor, c) for d, c in zip(spec.tumor_diameters_mm, TUMOR_CENTERS)]
    for i, t in enumerate(tumors):
        if not tumor_fits_liver(t):
            raise SpecError(f"tumor_diameters_mm: tumor {i + 1} ({t.diameter_mm:g} mm) does not fit in the liver")
    return tumors


def tumor_tissues(spec: StudySpec, n: int, t2_ratio: float | None = None, adc: float | None = None):
    base = DEFAULT_TISSUES[Label.TUMOR]
    t = replace(base, ecv=spec.tumor_ecv, fill_arterial=spec.tumor_arterial_fill, fill_portal=spec.tumor_portal_fill,
                t2_ratio=t2_ratio if t2_ratio is not None else base.t2_ratio, adc=adc if adc is not None else base.adc)
    return [replace(t, name="tumor" if i == 0 else f"tumor{i + 1}") for i in range(n)]


def study_context(spec: StudySpec, label: str, start: datetime, description: str) -> dict:
    pat = dicomio.patient(spec.seed)
    study_uid = dicomio.uid(spec.seed, label, "study")
    study_time = start - timedelta(seconds=UNENHANCED_BEFORE_BOLUS_S + 180.0)
    accession = f"PHA{dicomio.patient(spec.seed)['id'][4:]}{label[0].upper()}"

    def header(ds) -> None:
        ds.PatientName = pat["name"]
        ds.PatientID = pat["id"]
        ds.IssuerOfPatientID = "HCCNODE-PHANTOM"
        ds.PatientBirthDate = pat["birth_date"]
        ds.PatientSex = pat["sex"]
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = dicomio.dicom_date(study_time)
        ds.StudyTime = dicomio.dicom_time(study_time)
        ds.StudyID = label[:16]
        ds.AccessionNumber = accession
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = description
        ds.InstitutionName = "HCCNODE PHANTOM SITE"

    return {"label": label, "header": header, "study_uid": study_uid, "date": dicomio.dicom_date(study_time),
            "time": dicomio.dicom_time(study_time), "accession": accession, "bolus": start}


def generate(spec: StudySpec, out_dir: str | Path) -> Truth:
    """Write the phantom described by `spec` under `out_dir` (plus truth.json) and return its truth."""
    out = Path(out_dir)
    style = vendors.style(spec.vendor)
    grid = Grid(spec.matrix, spec.pixel_mm, spec.slices, spec.spacing, spec.slice_thickness_mm)
    studies: list[tuple[dict, list[SeriesPlan], dict]] = []
    if spec.kind in ("cect", "dect"):
        tumors = make_tumors(spec)
        tissues = tissue_table(spec.hct, spec.liver_ecv, tumor_tissues(spec, len(tumors)))
        start = dicomio.study_start(spec.seed)
        desc = "CT ABDOMEN LIVER 4-PHASE" + (" DUAL ENERGY" if spec.kind == "dect" else "")
        ctx = study_context(spec, "baseline", start, desc)
        plans = ct_plans(spec, style, tissues, tumors, start, ctx["label"])
        studies.append((ctx, plans, ct_truth(spec, tissues, tumors)))
    else:
        from hccnode.phantom.mr import mr_studies
        studies = mr_studies(spec, style, grid)
    total = sum(len(p.images) for _, plans, _ in studies for p in plans)
    bar = None
    if spec.progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="img", desc="phantom")
    try:
        for ctx, plans, _ in studies:
            for plan in plans:
                write = write_series
                # dicom3tools (2022) accepts only HU in the Enhanced CT pixel value transformation, so
                # iodine maps (mg/mL) stay single-frame even when Enhanced CT is asked for.
                if spec.enhanced and spec.kind != "mr" and plan.kind != "dect_iodine":
                    from hccnode.phantom.enhanced import write_enhanced_series as write
                    plan.extra["enhanced"] = True
                write(plan, ctx, grid, spec.seed, spec.vessels, out, spec.compression, spec.header_faults, bar)
    finally:
        if bar is not None:
            bar.close()
    truth = Truth(build_truth(spec, style, grid, studies))
    if spec.seg_phase:
        from hccnode.phantom.seg import write_seg
        write_seg(spec, truth, out)
    (out / "truth.json").write_text(json.dumps(truth.data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    log.event("phantom.generated", kind=spec.kind, vendor=spec.vendor, series=sum(len(p) for _, p, _ in studies),
              images=total)
    return truth


def ct_truth(spec: StudySpec, tissues: dict, tumors: list[Tumor]) -> dict:
    """Per ROI and phase: noise-free HU, ΔHU, iodine, VMI HU, λHU; ECV by construction."""
    per_phase = {p: phase_values(tissues, p, spec.delay(p), spec.hct) for p in PHASES}
    kevs = sorted(set(spec.vmi_kev) | {40.0, 90.0})
    rois = {}
    labels = dict(ROI_LABELS)
    for i in range(len(tumors)):
        labels[tissues[Label.TUMOR + i].name] = Label.TUMOR + i
    for name, lab in labels.items():
        t = tissues[lab]
        phases = {}
        for p in PHASES:
            v = per_phase[p]
            ic = v["iodine"][lab]
            vmi = {f"{k:g}": t.hu0 + ic * iodine_hu_per_mg_ml(k) for k in kevs}
            phases[p] = {"hu": v["hu"][lab], "delta_hu": v["delta_hu"][lab], "iodine_mg_ml": ic,
                         "fill": t.fill(p), "vmi_hu": vmi,
                         "lambda_hu": (vmi["40"] - vmi["90"]) / 50.0, "vnc_hu": t.hu0}
        rois[name] = {"label": int(lab), "ecv": t.ecv, "hu_unenhanced": t.hu0, "phases": phases}
        if name in ROI_CENTERS:
            rois[name]["roi_centers_patient_mm"] = [[x, y, TABLE_Z_MM] for x, y in ROI_CENTERS[name]]
    for i, tm in enumerate(tumors):
        r = rois[tissues[Label.TUMOR + i].name]
        r.update(diameter_mm=tm.diameter_mm, volume_ml=tm.volume_ml,
                 center_patient_mm=[tm.center_mm[0], tm.center_mm[1], tm.center_mm[2] + TABLE_Z_MM])
        a = per_phase["arterial"]
        r["nic_arterial"] = a["iodine"][Label.TUMOR + i] / a["iodine"][Label.AORTA]
        eq = per_phase["equilibrium"]
        r["nic_equilibrium"] = eq["iodine"][Label.TUMOR + i] / eq["iodine"][Label.AORTA]
    return rois


def build_truth(spec: StudySpec, style: dict, grid: Grid, studies) -> dict:
    pat = dicomio.patient(spec.seed)
    out_studies = []
    for ctx, plans, rois in studies:
        series = []
        for p in plans:
            s = {"kind": p.kind, "phase": p.phase, "series_instance_uid": dicomio.uid(spec.seed, ctx["label"], p.key,
                                                                                       "series"),
                 "series_number": p.number, "description": p.description, "folder": p.folder,
                 "n_instances": len(p.sop_uids), "sop_instance_uids": p.sop_uids,
                 "acquisition_start": p.acquired.isoformat(timespec="milliseconds")}
            s.update(p.extra)
            if p.phase in ("arterial", "portal", "equilibrium") and spec.kind != "mr":
                s["delay_s"] = spec.delay(p.phase)
                s["header_delay_s"] = (None if "no_times" in spec.header_faults
                                       else (p.acquired - ctx["bolus"]).total_seconds())
            if p.motion is not None:
                s["motion"] = {"shift_mm": list(p.motion.shift_mm), "rotation_deg": p.motion.rotation_deg}
            series.append(s)
        out_studies.append({
            "label": ctx["label"], "study_instance_uid": ctx["study_uid"], "study_date": ctx["date"],
            "study_time": ctx["time"], "accession_number": ctx["accession"],
            "bolus_start": ctx["bolus"].isoformat(timespec="milliseconds"),
            "frame_of_reference_uid": dicomio.uid(spec.seed, ctx["label"], "frame-of-reference"),
            "series": series, "rois": rois})
    return {
        "generator": f"hccnode.phantom {__version__}", "note": RESEARCH_USE + " Synthetic phantom, no patient.",
        "seed": spec.seed, "kind": spec.kind, "vendor": spec.vendor, "manufacturer": style["manufacturer"],
        "patient": pat, "hct": spec.hct,
        "delays_s": {p: spec.delay(p) for p in ("arterial", "portal", "equilibrium")} if spec.kind != "mr" else {},
        "units": {"hu": "HU", "iodine": "mg/mL", "adc": "1e-6 mm2/s", "t2_ratio": "tumor / erector spinae",
                  "diameter": "mm", "volume": "mL", "delay": "s after ContrastBolusStartTime"},
        "model": {"conventional_kev": CONVENTIONAL_KEV,
                  "iodine_hu_per_mg_ml": {f"{k:g}": iodine_hu_per_mg_ml(k) for k in (40, 50, 60, 70, 80, 90, 100)},
                  "equation": "delta_HU = ECV * plasma_enhancement(t) * fill(phase); blood ECV = 1 - HCT; "
                              "fill = 1 in equilibrium"},
        "geometry": {"matrix": grid.matrix, "pixel_spacing_mm": grid.pixel_mm, "slices": grid.slices,
                     "slice_spacing_mm": grid.spacing_mm, "slice_thickness_mm": grid.thickness_mm,
                     "table_z_mm": TABLE_Z_MM, "center_slice_index": grid.slices // 2,
                     "note": "body coordinates + (0, 0, table_z_mm) = patient LPS; slice index 0 is most superior"},
        "header_faults": list(spec.header_faults), "compression": spec.compression, "split": spec.split,
        "enhanced": spec.enhanced,
        "spec": spec.as_dict(),
        "studies": out_studies,
    }
