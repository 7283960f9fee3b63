"""CT markers of one study: paper 001 (CECT ECV and its voxelwise map), paper 000 (NIC and ECV on
the equilibrium iodine map), paper 002 (NIC-AP on the arterial iodine map, lambda HU on the
40/90 keV VMIs). Orchestration only: the formulas are hccnode.imaging.ecv / nic / spectral.

Every value names its ROI (reader or automatic), the series and phase it was read on, the
formula, the hematocrit used and the registration that brought the phase onto the reference
grid. Whatever cannot be computed is a Measurement with value None and the reason.
"""

from __future__ import annotations

import numpy as np

from hccnode.imaging import ecv, nic, spectral
from hccnode.imaging.measure import LabRef, Measurement, SeriesRef
from hccnode.imaging.roi_stats import bounding_box, union
from hccnode.imaging.volumes import Volume
from hccnode.pipeline.align import Aligned, Aligner
from hccnode.pipeline.findings import Findings, group_ref, mean_in, mean_over
from hccnode.pipeline.labs import Labs
from hccnode.pipeline.regions import Regions
from hccnode.pipeline.study import Series, Study

HU = "[hnsf'U]"
MG_ML = "mg/mL"


def _phase_image(study: Study, aligner: Aligner, series: Series | None, phase: str, anatomy_phase: str | None = None
                 ) -> tuple[Aligned | None, Volume | None, str | None]:
    """A series on the reference grid through its phase's registration; (None, None, why) if not."""
    if series is None:
        return None, None, f"no {phase} series in the study"
    vol = study.volume(series)
    if vol is None:
        return None, None, f"{series.describe()} cannot be read as a volume"
    anatomy = None
    if anatomy_phase is not None:
        a_series = study.anatomy(anatomy_phase)
        anatomy = study.volume(a_series) if a_series is not None else None
        if anatomy is None:
            return None, vol, f"no readable {anatomy_phase} image to register the {phase} series with"
    aligned = aligner.through(vol, anatomy)
    if not aligned.ok:
        return aligned, vol, aligned.problem
    return aligned, vol, None


def registered_series(study: Study, kind: str) -> list[Series]:
    """The anatomical series the markers below register to the reference: the unenhanced and
    equilibrium CT (`measure_cect`), and for dual energy the image of each phase whose iodine map
    or VMIs go through its registration (`measure_dect`); unenhanced first, as every ECV needs it."""
    found = [study.ct("unenhanced"), study.ct("equilibrium")]
    if kind == "dect":
        found += [study.anatomy(p) for p in ("equilibrium", "arterial")
                  if study.of_kind("dect_iodine", p) or study.of_kind("dect_vmi", p)]
    return list({s.uid: s for s in found if s is not None}.values())


def measure_cect(study: Study, aligner: Aligner, regions: Regions, labs: Labs, f: Findings) -> None:
    """Paper 001: ECV (%) of each tumor ROI and of the liver (mean of its ROIs), and the ECV map."""
    formula = "paper001.ecv_cect"
    tumors, livers, aortas = regions.arrays("tumor"), regions.arrays("liver"), regions.arrays("aorta")
    liver_ref = group_ref([r for r, _ in livers], "liver")
    targets = [("ecv_tumor", r.ref, [m]) for r, m in tumors] + (
        [("ecv_liver", liver_ref, [m for _, m in livers])] if livers else [])

    un_s, eq_s = study.ct("unenhanced"), study.ct("equilibrium")
    un, un_vol, why_un = _phase_image(study, aligner, un_s, "unenhanced")
    eq, eq_vol, why_eq = _phase_image(study, aligner, eq_s, "equilibrium")
    series = tuple(SeriesRef(v.series_uid, p) for v, p in ((un_vol, "unenhanced"), (eq_vol, "equilibrium")) if v)
    registration = (un.quality if un is not None else None) or (eq.quality if eq is not None else None)
    hct, hct_reason = labs.value("001", "hct")

    def missing(reason: str) -> None:
        for marker, ref, _ in targets:
            f.add(Measurement.missing(marker, "%", formula, reason, roi=ref, series=series, registration=registration,
                                      lab=hct, lab_missing_reason=hct_reason))
        if not livers:
            f.note("ecv_liver not measured: no liver ROI")

    if why_un or why_eq:
        missing("; ".join(w for w in (why_un, why_eq) if w))
        return
    un_a, eq_a = un.array(), eq.array()
    # ROI means per phase (HU) and enhancement, for every ROI: what the ECV is computed from.
    for role_rois in (tumors, livers, aortas):
        for roi, mask in role_rois:
            try:
                hu_un, hu_eq = mean_in(un_a, mask), mean_in(eq_a, mask)
            except ValueError as exc:
                f.note(f"{roi.role} ROI {roi.ref.label or ''}: HU not read ({exc})")
                continue
            name = roi.role
            f.add(Measurement(f"{name}_hu_unenhanced", hu_un, HU, "roi.mean_hu", roi=roi.ref, series=series[:1],
                              registration=registration))
            f.add(Measurement(f"{name}_hu_equilibrium", hu_eq, HU, "roi.mean_hu", roi=roi.ref, series=series[1:]))
            f.add(Measurement(f"{name}_delta_hu", hu_eq - hu_un, HU, "roi.delta_hu", roi=roi.ref, series=series,
                              registration=registration))
    if not aortas:
        missing("no aorta ROI (the aortic enhancement is the reference of paper 001's formula)")
        return
    try:
        aorta_un = mean_over(un_a, [m for _, m in aortas])
        aorta_eq = mean_over(eq_a, [m for _, m in aortas])
    except ValueError as exc:
        missing(f"aorta HU not read: {exc}")
        return
    for marker, ref, masks in targets:
        try:
            tissue_un = [mean_in(un_a, m) for m in masks]
            tissue_eq = [mean_in(eq_a, m) for m in masks]
        except ValueError as exc:
            f.add(Measurement.missing(marker, "%", formula, f"ROI HU not read: {exc}", roi=ref, series=series,
                                      registration=registration))
            continue
        r = ecv.cect_ecv(tissue_un, tissue_eq, aorta_un, aorta_eq, hct.value if hct else None,
                         hct_missing_reason=hct_reason or "no hematocrit")
        if r.ecv_percent is None:
            f.add(Measurement.missing(marker, "%", formula, r.missing_reason, roi=ref, series=series, lab=hct,
                                      lab_missing_reason=hct_reason, registration=registration))
        else:
            f.add(Measurement.of(formula, marker, r.ecv_percent, roi=ref, series=series, lab=hct,
                                 registration=registration))
    spacing = tuple(reversed(aligner.reference.image.GetSpacing()))
    _ecv_map(un, eq, spacing, [m for _, m in livers], aorta_eq - aorta_un, hct, hct_reason, f)


def _ecv_map(un: Aligned, eq: Aligned, spacing: tuple[float, float, float], livers: list[np.ndarray], d_aorta: float,
             hct: LabRef | None, hct_reason: str | None, f: Findings) -> None:
    """Voxelwise paper-001 ECV (%) over the liver ROIs (hccnode.imaging.ecv.ecv_map_percent), as the
    values over the liver's box (a BoxedArray)."""
    if not livers:
        f.note("ECV map not computed: no liver ROI")
        return
    if hct is None:
        f.note(f"ECV map not computed: {hct_reason}")
        return
    if not d_aorta > 0:
        f.note(f"ECV map not computed: aortic enhancement {d_aorta:.1f} HU is not positive")
        return
    liver = union(livers)
    f.ecv_map = ecv.ecv_map_boxed(un.array(), eq.array(), liver, d_aorta, hct.value, spacing)
    f.ecv_map_liver = liver


def measure_dect(study: Study, aligner: Aligner, regions: Regions, labs: Labs, f: Findings) -> None:
    """Papers 000 and 002 on the iodine maps and VMIs of a dual-energy study."""
    tumors, aortas = regions.arrays("tumor"), regions.arrays("aorta")
    aorta_ref = group_ref([r for r, _ in aortas], "aorta")

    # paper 000: equilibrium iodine map -> NIC, ECV = NIC x (1 - HCT) (a fraction)
    iodine, vol, why = _phase_image(study, aligner, study.first("dect_iodine", "equilibrium"),
                                    "equilibrium iodine map", "equilibrium")
    series = (SeriesRef(vol.series_uid, "equilibrium iodine map"),) if vol else ()
    hct, hct_reason = labs.value("000", "hct")
    reg = iodine.quality if iodine is not None else None
    ic_aorta, why_aorta = _aorta_iodine(iodine, aortas, why, f, aorta_ref, series, reg)
    for roi, mask in tumors:
        ic_t, reason = _roi_iodine(iodine, roi, mask, why, f, series, reg)
        reason = reason or why_aorta
        if reason:
            f.add(Measurement.missing("nic_tumor", "1", "paper000.nic", reason, roi=roi.ref, series=series,
                                      registration=reg))
            f.add(Measurement.missing("ecv_tumor_iodine", "1", "paper000.ecv_dect", reason, roi=roi.ref,
                                      series=series, registration=reg, lab=hct, lab_missing_reason=hct_reason))
            continue
        r = ecv.dect_ecv(ic_t, ic_aorta, hct.value if hct else None, hct_missing_reason=hct_reason or "no hematocrit")
        f.add(Measurement.of("paper000.nic", "nic_tumor", r.nic, roi=roi.ref, series=series, registration=reg))
        if r.ecv_fraction is None:
            f.add(Measurement.missing("ecv_tumor_iodine", "1", "paper000.ecv_dect", r.missing_reason, roi=roi.ref,
                                      series=series, registration=reg, lab_missing_reason=hct_reason))
        else:
            f.add(Measurement.of("paper000.ecv_dect", "ecv_tumor_iodine", r.ecv_fraction, roi=roi.ref, series=series,
                                 lab=hct, registration=reg))

    # paper 002: arterial iodine map -> NIC-AP (%); 40 / 90 keV VMIs -> lambda HU
    iodine, vol, why = _phase_image(study, aligner, study.first("dect_iodine", "arterial"),
                                    "arterial iodine map", "arterial")
    series = (SeriesRef(vol.series_uid, "arterial iodine map"),) if vol else ()
    reg = iodine.quality if iodine is not None else None
    ic_aorta, why_aorta = _aorta_iodine(iodine, aortas, why, f, aorta_ref, series, reg, "_arterial")
    for roi, mask in tumors:
        ic_t, reason = _roi_iodine(iodine, roi, mask, why, f, series, reg, "_arterial")
        reason = reason or why_aorta
        if reason:
            f.add(Measurement.missing("nic_ap_tumor", "%", "paper002.nic_ap", reason, roi=roi.ref, series=series,
                                      registration=reg))
        else:
            f.add(Measurement.of("paper002.nic_ap", "nic_ap_tumor", nic.nic_ap_percent(ic_t, ic_aorta), roi=roi.ref,
                                 series=series, registration=reg))
    v40, vol40, why40 = _phase_image(study, aligner, study.vmi("arterial", spectral.LOW_KEV),
                                     f"arterial {spectral.LOW_KEV:g} keV VMI", "arterial")
    v90, vol90, why90 = _phase_image(study, aligner, study.vmi("arterial", spectral.HIGH_KEV),
                                     f"arterial {spectral.HIGH_KEV:g} keV VMI", "arterial")
    series = tuple(SeriesRef(v.series_uid, f"arterial {k:g} keV VMI")
                   for v, k in ((vol40, spectral.LOW_KEV), (vol90, spectral.HIGH_KEV)) if v)
    reg = (v40.quality if v40 is not None else None)
    for roi, mask in tumors:
        reason = why40 or why90
        if not reason:
            try:
                lam = spectral.lambda_hu(mean_in(v40.array(), mask), mean_in(v90.array(), mask))
            except ValueError as exc:
                reason = f"ROI not read: {exc}"
        if reason:
            f.add(Measurement.missing("lambda_hu_tumor", "[hnsf'U]/keV", "paper002.lambda_hu", reason, roi=roi.ref,
                                      series=series, registration=reg))
        else:
            f.add(Measurement.of("paper002.lambda_hu", "lambda_hu_tumor", lam, roi=roi.ref, series=series,
                                 registration=reg))


def _aorta_iodine(iodine: Aligned | None, aortas, why: str | None, f: Findings, ref, series, reg, suffix: str = ""
                  ) -> tuple[float | None, str | None]:
    if why:
        return None, why
    if not aortas:
        return None, "no aorta ROI (NIC is normalised to the aortic iodine concentration)"
    try:
        value = mean_over(iodine.array(), [m for _, m in aortas])
    except ValueError as exc:
        return None, f"aorta iodine not read: {exc}"
    f.add(Measurement(f"aorta_iodine{suffix}", value, MG_ML, "roi.iodine_concentration", roi=ref, series=series,
                      registration=reg))
    if not value > 0:
        return None, f"aortic iodine concentration {value:.2f} mg/mL is not positive"
    return value, None


def _roi_iodine(iodine: Aligned | None, roi, mask, why: str | None, f: Findings, series, reg, suffix: str = ""
                ) -> tuple[float | None, str | None]:
    if why:
        return None, why
    try:
        value = mean_in(iodine.array(), mask)
    except ValueError as exc:
        return None, f"ROI not read: {exc}"
    f.add(Measurement(f"{roi.role}_iodine{suffix}", value, MG_ML, "roi.iodine_concentration", roi=roi.ref,
                      series=series, registration=reg))
    return value, None


def measure_size(reference: Volume, phase: str, regions: Regions, f: Findings) -> None:
    """Tumor maximal in-plane diameter (mm) and volume (mL) of each reader's tumor ROI."""
    from hccnode.imaging import size

    spacing = tuple(reversed(reference.image.GetSpacing()))
    series = (SeriesRef(reference.series_uid, phase),)
    for roi, mask in regions.arrays("tumor"):
        box = bounding_box(mask)
        mask = mask[box] if box else mask  # the size functions scan every voxel: the tumor's box, not the grid
        d, _ = size.max_inplane_diameter_mm(mask, spacing)
        f.add(Measurement.of("size.max_inplane_diameter", "tumor_diameter", d, roi=roi.ref, series=series))
        f.add(Measurement.of("size.volume", "tumor_volume", size.volume_ml(mask, spacing), roi=roi.ref, series=series))

