"""CT markers of one study: paper 001 (CECT ECV and its voxelwise map), paper 000 (NIC and ECV on
the equilibrium iodine map), paper 002 (NIC-AP on the arterial iodine map, lambda HU on the
40/90 keV VMIs). Orchestration only: the formulas are hccnode.imaging.ecv / nic / spectral.

Every value names its ROI (reader or automatic), the series and phase it was read on (with its
delay after contrast), the formula, the hematocrit used and the registration that brought the
phase onto the reference grid. Each lesion (hccnode.pipeline.lesions) is measured in its
measurement ROIs, averaged, against the aorta at its own level (hccnode.pipeline.levels); its
size on its extent. Whatever cannot be computed is a Measurement with value None and the reason.
An iodine map's unit is decided by hccnode.imaging.iodine_unit (header, else a cited vendor
convention, checked against the aorta): absolute iodine in mg/mL only when it is known, NIC either
way; the decision goes with each value (`input_unit`).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from hccnode.imaging import ecv, iodine_unit, nic, phase_timing, reference_level, spectral
from hccnode.imaging.measure import LabRef, Measurement, SeriesRef
from hccnode.imaging.roi_stats import bounding_box, union
from hccnode.imaging.volumes import Volume
from hccnode.pipeline import levels
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


def _series(study: Study, volume: Volume | None, phase: str) -> tuple[SeriesRef, ...]:
    """The SeriesRef of a phase's volume, with its delay after contrast where the headers give it."""
    if volume is None:
        return ()
    found = next((s for s in study.series if s.uid == volume.series_uid), None)
    delay = phase_timing.delay_after_contrast_s(study.headers(found)) if found is not None and phase != "unenhanced" \
        else None
    return (SeriesRef(volume.series_uid, phase, delay),)


def _level_note(what: str, name: str, rois: str, quote: str) -> str:
    return f"{what} at the level of {name}: {rois} ({quote})"


LEVEL_001 = 'paper 001: "Within the abdominal aorta at the same level"'
LEVEL_000 = 'paper 000: "adjacent main artery at the same level"'
LEVEL_002 = 'paper 002: "An additional ROI was positioned on the abdominal aorta on the same slice"'


def measure_cect(study: Study, aligner: Aligner, regions: Regions, labs: Labs, f: Findings) -> None:
    """Paper 001: ECV (%) of each lesion and of the liver (mean of its ROIs), each against the
    aorta at its own level (hccnode.pipeline.levels), and the ECV map."""
    formula = "paper001.ecv_cect"
    livers, aortas = regions.arrays("liver"), regions.arrays("aorta")
    liver_ref = group_ref([r for r, _ in livers], "liver")
    liver_level = dict(levels.levels(regions)).get("the liver ROIs", [])
    # (marker, ROI reported against, masks averaged, level name, level slices, lesion note)
    targets = [("ecv_tumor", les.region.ref, les.rois, les.describe(), les.slices) for les in regions.lesions] + (
        [("ecv_liver", liver_ref, [m for _, m in livers], "the liver ROIs", liver_level)] if livers else [])

    un_s, eq_s = study.ct("unenhanced"), study.ct("equilibrium")
    un, un_vol, why_un = _phase_image(study, aligner, un_s, "unenhanced")
    eq, eq_vol, why_eq = _phase_image(study, aligner, eq_s, "equilibrium")
    series = _series(study, un_vol, "unenhanced") + _series(study, eq_vol, "equilibrium")
    registration = (un.quality if un is not None else None) or (eq.quality if eq is not None else None)
    hct, hct_reason = labs.value("001", "hct")

    def missing(reason: str) -> None:
        for marker, ref, *_ in targets:
            f.add(Measurement.missing(marker, "%", formula, reason, roi=ref, series=series, registration=registration,
                                      lab=hct, lab_missing_reason=hct_reason))
        if not livers:
            f.note("ecv_liver not measured: no liver ROI")

    if why_un or why_eq:
        missing("; ".join(w for w in (why_un, why_eq) if w))
        return
    un_a, eq_a = un.array(), eq.array()
    # ROI means per phase (HU) and enhancement, for every ROI: what the ECV is computed from.
    units = [(les.region.ref, les.rois) for les in regions.lesions] + [(r.ref, [m]) for r, m in livers + aortas]
    for ref, masks in units:
        try:
            hu_un, hu_eq = mean_over(un_a, masks), mean_over(eq_a, masks)
        except ValueError as exc:
            f.note(f"{ref.name} ROI {ref.label or ''}: HU not read ({exc})")
            continue
        f.add(Measurement(f"{ref.name}_hu_unenhanced", hu_un, HU, "roi.mean_hu", roi=ref, series=series[:1],
                          registration=registration))
        f.add(Measurement(f"{ref.name}_hu_equilibrium", hu_eq, HU, "roi.mean_hu", roi=ref, series=series[1:]))
        f.add(Measurement(f"{ref.name}_delta_hu", hu_eq - hu_un, HU, "roi.delta_hu", roi=ref, series=series,
                          registration=registration))
    d_liver_aorta = None
    for marker, ref, masks, name, slices in targets:
        ring, which = levels.at_level(aortas, slices)
        if not ring:
            f.add(Measurement.missing(marker, "%", formula, f"no aorta ROI at the level of {name} ({LEVEL_001})",
                                      roi=ref, series=series, registration=registration, lab=hct,
                                      lab_missing_reason=hct_reason))
            continue
        try:
            aorta_un, aorta_eq = mean_over(un_a, ring), mean_over(eq_a, ring)
            tissue_un = [mean_in(un_a, m) for m in masks]
            tissue_eq = [mean_in(eq_a, m) for m in masks]
        except ValueError as exc:
            f.add(Measurement.missing(marker, "%", formula, f"ROI HU not read: {exc}", roi=ref, series=series,
                                      registration=registration))
            continue
        notes = (_level_note(f"aorta (delta {aorta_eq - aorta_un:.1f} HU)", name, which, LEVEL_001),)
        if marker == "ecv_liver":
            d_liver_aorta = aorta_eq - aorta_un
        r = ecv.cect_ecv(tissue_un, tissue_eq, aorta_un, aorta_eq, hct.value if hct else None,
                         hct_missing_reason=hct_reason or "no hematocrit")
        if r.ecv_percent is None:
            f.add(Measurement.missing(marker, "%", formula, r.missing_reason, roi=ref, series=series, lab=hct,
                                      lab_missing_reason=hct_reason, registration=registration, notes=notes))
        else:
            f.add(Measurement.of(formula, marker, r.ecv_percent, roi=ref, series=series, lab=hct,
                                 registration=registration, notes=notes))
    spacing = tuple(reversed(aligner.reference.image.GetSpacing()))
    if livers and d_liver_aorta is None:
        f.note("ECV map not computed: no aortic enhancement at the liver ROIs' level")
        return
    _ecv_map(un, eq, spacing, [m for _, m in livers], d_liver_aorta, hct, hct_reason, f)


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
    """Papers 000 and 002 on the iodine maps and VMIs of a dual-energy study, per lesion, each
    lesion's iodine normalised to the aorta at its own level."""
    lesions, aortas = regions.lesions, regions.arrays("aorta")
    reference = aligner.reference

    # paper 000: equilibrium iodine map -> NIC, ECV = NIC x (1 - HCT) (a fraction)
    iodine, vol, why, unit = _iodine_map(study, aligner, aortas, "equilibrium")
    series = _series(study, vol, "equilibrium iodine map")
    hct, hct_reason = labs.value("000", "hct")
    reg = iodine.quality if iodine is not None else None
    used = unit.nic_note if unit is not None else None
    for les in lesions:
        roi = les.region
        ic_aorta, why_aorta, notes = _aorta_iodine(iodine, unit, aortas, les, why, f, series, reg, LEVEL_000)
        ic_t, reason = _roi_iodine(iodine, unit, roi, les.rois, why, f, series, reg)
        reason = reason or why_aorta
        if reason:
            f.add(Measurement.missing("nic_tumor", "1", "paper000.nic", reason, roi=roi.ref, series=series,
                                      registration=reg, notes=notes))
            f.add(Measurement.missing("ecv_tumor_iodine", "1", "paper000.ecv_dect", reason, roi=roi.ref,
                                      series=series, registration=reg, lab=hct, lab_missing_reason=hct_reason,
                                      notes=notes))
            continue
        r = ecv.dect_ecv(ic_t, ic_aorta, hct.value if hct else None, hct_missing_reason=hct_reason or "no hematocrit")
        f.add(Measurement.of("paper000.nic", "nic_tumor", r.nic, roi=roi.ref, series=series, registration=reg,
                             notes=notes, input_unit=used))
        if r.ecv_fraction is None:
            f.add(Measurement.missing("ecv_tumor_iodine", "1", "paper000.ecv_dect", r.missing_reason, roi=roi.ref,
                                      series=series, registration=reg, lab_missing_reason=hct_reason, notes=notes))
        else:
            f.add(Measurement.of("paper000.ecv_dect", "ecv_tumor_iodine", r.ecv_fraction, roi=roi.ref, series=series,
                                 lab=hct, registration=reg, notes=notes, input_unit=used))

    # paper 002: arterial iodine map -> NIC-AP (%); 40 / 90 keV VMIs -> lambda HU
    iodine, vol, why, unit = _iodine_map(study, aligner, aortas, "arterial")
    series = _series(study, vol, "arterial iodine map")
    reg = iodine.quality if iodine is not None else None
    for les in lesions:
        roi = les.region
        ic_aorta, why_aorta, notes = _aorta_iodine(iodine, unit, aortas, les, why, f, series, reg, LEVEL_002,
                                                   "_arterial")
        if not why_aorta:
            why_aorta, coverage = _coverage_002(aortas, les, reference)
            notes += (coverage,)
        ic_t, reason = _roi_iodine(iodine, unit, roi, les.rois, why, f, series, reg, "_arterial")
        reason = reason or why_aorta
        if reason:
            f.add(Measurement.missing("nic_ap_tumor", "%", "paper002.nic_ap", reason, roi=roi.ref, series=series,
                                      registration=reg, notes=notes))
        else:
            f.add(Measurement.of("paper002.nic_ap", "nic_ap_tumor", nic.nic_ap_percent(ic_t, ic_aorta), roi=roi.ref,
                                 series=series, registration=reg, notes=notes, input_unit=unit.nic_note))
    v40, vol40, why40 = _phase_image(study, aligner, study.vmi("arterial", spectral.LOW_KEV),
                                     f"arterial {spectral.LOW_KEV:g} keV VMI", "arterial")
    v90, vol90, why90 = _phase_image(study, aligner, study.vmi("arterial", spectral.HIGH_KEV),
                                     f"arterial {spectral.HIGH_KEV:g} keV VMI", "arterial")
    series = (_series(study, vol40, f"arterial {spectral.LOW_KEV:g} keV VMI")
              + _series(study, vol90, f"arterial {spectral.HIGH_KEV:g} keV VMI"))
    reg = (v40.quality if v40 is not None else None)
    for les in lesions:
        roi = les.region
        reason = why40 or why90
        if not reason:
            try:
                lam = spectral.lambda_hu(mean_over(v40.array(), les.rois), mean_over(v90.array(), les.rois))
            except ValueError as exc:
                reason = f"ROI not read: {exc}"
        if reason:
            f.add(Measurement.missing("lambda_hu_tumor", "[hnsf'U]/keV", "paper002.lambda_hu", reason, roi=roi.ref,
                                      series=series, registration=reg))
        else:
            f.add(Measurement.of("paper002.lambda_hu", "lambda_hu_tumor", lam, roi=roi.ref, series=series,
                                 registration=reg))


def _coverage_002(aortas, les, reference: Volume) -> tuple[str | None, str]:
    """Paper 002's aortic ROI covers at least half the lumen: (why not, what was found)."""
    ring, _ = levels.at_level(aortas, les.slices)
    covered = reference_level.lumen_coverage(union(ring), sitk.GetArrayViewFromImage(reference.image), reference.image)
    need = reference_level.MIN_COVERAGE
    quote = 'paper 002: "covering at least 50% of the arterial cross-section"'
    if covered is None:
        return None, f"aortic ROI's share of the lumen not checked: no enhanced lumen found on the reference series ({quote})"
    text = f"aortic ROI covers {100 * covered:.0f} % of the lumen's cross-section ({quote})"
    return (None if covered >= need else f"the {text}"), text


def _iodine_map(study: Study, aligner: Aligner, aortas, phase: str
                ) -> tuple[Aligned | None, Volume | None, str | None, iodine_unit.Decision | None]:
    """The `phase` iodine map on the reference grid and how its values are read
    (hccnode.imaging.iodine_unit: its header, else a cited vendor convention, checked against the
    mean of the aorta ROIs on the map; else unknown, NIC only)."""
    source = study.first("dect_iodine", phase)
    iodine, vol, why = _phase_image(study, aligner, source, f"{phase} iodine map", phase)
    if why:
        return iodine, vol, why, None
    try:
        aorta = mean_over(iodine.array(), [m for _, m in aortas]) if aortas else None
    except ValueError:
        aorta = None
    return iodine, vol, None, iodine_unit.decide_for(study.headers(source)[0], phase, aorta)


def _iodine_value(marker: str, value: float, unit: iodine_unit.Decision, **kw) -> Measurement:
    """An iodine concentration read on the map (`value` on its linear scale): in mg/mL when the
    map's unit is decided, else not reported, with the reason."""
    mg = unit.mg_ml(value)
    if mg is None:
        return Measurement.missing(marker, MG_ML, "roi.iodine_concentration",
                                   f"absolute iodine concentration not reported: {unit.text}", **kw)
    return Measurement(marker, mg, MG_ML, "roi.iodine_concentration", input_unit=unit.text, **kw)


def _aorta_iodine(iodine: Aligned | None, unit: iodine_unit.Decision | None, aortas, les, why: str | None,
                  f: Findings, series, reg, quote: str, suffix: str = ""
                  ) -> tuple[float | None, str | None, tuple[str, ...]]:
    """The aortic iodine at the level of lesion `les`, on the map's linear scale (mg/mL when its
    unit is known): (value, why not, notes)."""
    if why:
        return None, why, ()
    ring, which = levels.at_level(aortas, les.slices)
    if not ring:
        return None, f"no aorta ROI at the level of {les.describe()} ({quote}; NIC is normalised to the aorta)", ()
    try:
        value = unit.linear(mean_over(iodine.array(), ring))
    except ValueError as exc:
        return None, f"aorta iodine not read: {exc}", ()
    shown = f"{value:.2f} mg/mL" if unit.unit is not None else f"{value:.3g} on the map's own scale, unit not decided"
    notes = (_level_note(f"aorta ({shown})", les.describe(), which, quote),)
    ref = group_ref([r for r, m in aortas if levels.at_level([(r, m)], les.slices)[0]], "aorta")
    f.add(_iodine_value(f"aorta_iodine{suffix}", value, unit, roi=ref,
                        series=series, registration=reg, notes=notes))
    if not value > 0:
        return None, f"aortic iodine {shown} is not positive", notes
    return value, None, notes


def _roi_iodine(iodine: Aligned | None, unit: iodine_unit.Decision | None, roi, masks, why: str | None, f: Findings,
                series, reg, suffix: str = "") -> tuple[float | None, str | None]:
    """A lesion's iodine over its ROIs on the map's linear scale: (value, why not)."""
    if why:
        return None, why
    try:
        value = unit.linear(mean_over(iodine.array(), masks))
    except ValueError as exc:
        return None, f"ROI not read: {exc}"
    f.add(_iodine_value(f"{roi.role}_iodine{suffix}", value, unit,
                        roi=roi.ref, series=series, registration=reg))
    return value, None


def measure_size(reference: Volume, phase: str, regions: Regions, f: Findings) -> None:
    """Each lesion's maximal in-plane diameter (mm) and volume (mL), on its extent; a lesion
    without one has its size reported as not measured, with the reason (hccnode.pipeline.lesions)."""
    from hccnode.imaging import size

    spacing = tuple(reversed(reference.image.GetSpacing()))
    series = (SeriesRef(reference.series_uid, phase),)
    for les in regions.lesions:
        if les.extent is None:
            for marker, formula, unit in (("tumor_diameter", "size.max_inplane_diameter", "mm"),
                                          ("tumor_volume", "size.volume", "mL")):
                f.add(Measurement.missing(marker, unit, formula, les.size_reason, roi=les.region.ref, series=series))
            continue
        mask = regions.array(les.extent)
        box = bounding_box(mask)
        mask = mask[box] if box else mask  # the size functions scan every voxel: the tumor's box, not the grid
        f.add(Measurement.of("size.max_inplane_diameter", "tumor_diameter", les.diameter_mm, roi=les.extent.ref,
                             series=series))
        f.add(Measurement.of("size.volume", "tumor_volume", size.volume_ml(mask, spacing), roi=les.extent.ref,
                             series=series))
