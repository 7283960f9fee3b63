"""`analyze_study`: one stored study from phase decisions to DICOM outputs in the outbox.

Steps: classify phases (stored decisions) -> choose the reference series -> ROIs (reader's
annotation, automatic ROIs for the roles it lacks) -> register phases and measure every
applicable marker of papers 000-003 -> labs at scan time -> model cards -> SEG, ECV map, SR and
summary (hccnode.report.build_outputs) in `<data_dir>/outputs/<study>/<SR UID>/` -> outbox.
Each step is audited. A study that cannot be fully measured still gets an SR that says what
is missing and why; a study with no CT or MR image series readable as a volume raises
`NotApplicable` (the analysis does not apply to it) with what it holds instead.

Re-running with identical inputs gives identical output UIDs (they derive from the inputs);
a changed input gives a new SR naming the last one as its predecessor.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import pydicom
import SimpleITK as sitk
from pydicom.multival import MultiValue
from pydicom.uid import UID

import hccnode
from hccnode import log
from hccnode.config import PriorsSection
from hccnode.imaging.measure import Measurement
from hccnode.imaging.phase_rules import RuleSet
from hccnode.imaging.volumes import Volume
from hccnode.models import p003_pairing
from hccnode.pipeline import ct, lesions, levels, mr
from hccnode.pipeline.align import Aligner
from hccnode.pipeline.findings import Findings
from hccnode.pipeline.labs import Labs
from hccnode.pipeline.models import run_cards
from hccnode.pipeline.regions import TUMOR_NOT_PLACED, Regions, complete_ct, complete_mr, reader_rois
from hccnode.pipeline.study import NotApplicable, Series, Study
from hccnode.report import Reference, ReportRoi, build_outputs, load_template
from hccnode.report.inputs import analysis_key
from hccnode.report.outputs import output_uids
from hccnode.store import analyses, audit, outbox, studies
from hccnode.store.db import Store


ACTOR = "pipeline"
OUTPUTS_DIR = "outputs"
# Reference series, in order of preference: the phase the papers measure on (paper 001 and 000:
# equilibrium), then the other enhanced phases.
CT_REFERENCE_PHASES = ("equilibrium", "portal_venous", "arterial", "unenhanced")

# ROI roles the markers of each kind of study use (papers 000-002 on CT, 003 on MR).
ROLES = {"cect": {"tumor", "liver", "aorta"}, "dect": {"tumor", "liver", "aorta"}, "mr": {"tumor", "muscle"}}

Progress = Callable[[str], None]
BASELINE_TOLERANCE_DAYS = PriorsSection.tolerance_days   # the site's margin's default; not paper 003's


@dataclass
class Analysis:
    """What one run produced (also the job's result record, via `as_record`)."""

    study_uid: str
    kind: str
    out_dir: Path | None = None
    files: list[Path] = field(default_factory=list)
    output_uids: list[str] = field(default_factory=list)
    card_versions: list[str] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    model_results: list[dict] = field(default_factory=list)
    queued: int = 0
    replaces: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    inputs: dict[str, Any] = field(default_factory=dict)     # recorded with the analysis (hccnode.store.analyses)

    def as_record(self) -> dict[str, Any]:
        return {"study_uid": self.study_uid, "kind": self.kind, "output_uids": self.output_uids,
                "card_versions": self.card_versions, "out_dir": str(self.out_dir) if self.out_dir else None,
                "measured": sum(m.value is not None for m in self.measurements),
                "not_measured": sum(m.value is None for m in self.measurements) + len(self.missing),
                "missing": self.missing, "queued": self.queued, "replaces": self.replaces, "seconds": self.timings,
                "software_version": hccnode.__version__}


def study_kind(study: Study) -> str:
    kinds = {s.kind for s in study.series}
    if kinds & {"mr_t2", "mr_dwi", "mr_adc"}:
        return "mr"
    if any(k.startswith("dect_") for k in kinds):
        return "dect"
    if any(k.startswith("ct_") for k in kinds):
        return "cect"
    return "other"


def analyze_study(store: Store, study_uid: str, *, destinations: Sequence[str] = (), job_id: int | None = None,
                  rules: RuleSet | None = None, progress: Progress | None = None,
                  outputs_dir: str | Path | None = None,
                  baseline_tolerance_days: float = BASELINE_TOLERANCE_DAYS) -> Analysis:
    """Analyse a stored study end to end (see the module docstring). `outputs_dir` replaces
    `<data_dir>/outputs` as the folder the study's output folders go in (`audit reverify` writes
    its recomputation elsewhere, so the original analysis' files are never replaced); outside the
    data directory it takes no `destinations` (the outbox names files relative to the data directory).
    `baseline_tolerance_days` is the site's `[priors] tolerance_days` around paper 003's 56-70-day
    baseline interval. Paper 003's labs are matched before the treatment start the site set on the
    study or its baseline (hccnode.store.studies), else before the baseline MRI
    (hccnode.models.p003_pairing); the date used is recorded with the analysis' inputs."""
    if outputs_dir is not None and destinations and not Path(outputs_dir).resolve().is_relative_to(store.data_dir):
        raise ValueError("outputs outside the data directory cannot be queued for destinations")
    timings: dict[str, float] = {}
    clock = [time.perf_counter(), "start"]

    def step(name: str) -> None:
        t = time.perf_counter()
        timings[clock[1]] = round(t - clock[0], 3)
        clock[:] = [t, name]
        if progress:
            progress(name)

    step("phases")
    study = Study.load(store, study_uid, rules)
    patient_key = studies.patient_key(store, study_uid)
    for d in study.decisions:
        audit.append(store, "phase.decided", ACTOR, study_uid=study_uid, patient_key=patient_key, series=d.series_uid,
                     series_number=d.series_number, kind=d.kind, phase=d.phase, kev=d.kev,
                     confidence=round(d.confidence, 3))
    kind = study_kind(study)
    result = Analysis(study_uid, kind)
    f = Findings()

    step("volumes")
    ref_series, reference = _reference(study, kind)
    image = ref_series if reference is not None else _image_series(store, study, patient_key)
    regions = Regions()
    follow_up = False
    labs_used: list = []
    if reference is None:
        f.note("nothing measured: no readable image series to measure on" if kind != "other"
               else "nothing measured: the study holds no CT or MR series of a kind the papers measure")
    else:
        aligner = Aligner(reference, study_uid)
        if kind in ("cect", "dect"):  # registered on the second core while the ROIs are placed
            for anatomy in ct.registered_series(study, kind):
                vol = study.volume(anatomy)
                if vol is not None:
                    aligner.register_ahead(vol)
        step("rois")
        regions = reader_rois(study, reference, aligner)
        if kind == "mr":
            complete_mr(regions, reference)
        else:
            complete_ct(regions, reference, unenhanced=lambda: _unenhanced_on(study, aligner, ref_series),
                        vessels=lambda: _portal_on(study, aligner, ref_series))
        # the SEG shows where numbers came from: only the roles this kind of study measures
        unused = sorted({r.role for r in regions.rois} - ROLES[kind])
        regions.rois = [r for r in regions.rois if r.role in ROLES[kind]]
        for note in lesions.apply(regions, tuple(reversed(reference.image.GetSpacing()))):
            f.note(note)
        if kind in ("cect", "dect"):  # the aorta at each lesion's and the liver ROIs' level
            for note in levels.place_aortas(regions, reference, lumen_wide=kind == "dect"):
                f.note(note)
        f.lesions = regions.lesions
        if unused:
            f.note(f"reader's {', '.join(unused)} ROI(s) not used: no {kind.upper()} marker of papers 000-003 needs them")
        if not regions.by_role("tumor"):
            f.note(f"tumor not measured: {TUMOR_NOT_PLACED}")
        for note in regions.notes:
            f.note(note)
        for roi in regions.rois:
            audit.append(store, "roi.source", ACTOR, study_uid=study_uid, patient_key=patient_key, role=roi.role,
                         source=roi.ref.source, annotation=roi.ref.annotation_uid, label=roi.ref.label,
                         reference_series=reference.series_uid, voxels=int(sitk.GetArrayViewFromImage(roi.mask).sum()),
                         carried=regions.registration.get(roi.ref.annotation_uid or ""))
        aligner.limit_to(regions.boxes())  # other series are needed only where the ROIs are
        pid, issuer = study.patient()
        labs = Labs(store, study_uid, pid, issuer, study.scan_time(ref_series), patient_key)
        step("markers")
        if kind in ("cect", "dect"):
            ct.measure_cect(study, aligner, regions, labs, f)
            if kind == "dect":
                ct.measure_dect(study, aligner, regions, labs, f)
            ct.measure_size(reference, ref_series.phase or "reference", regions, f)
        elif kind == "mr":
            mr.measure_mr(study, reference, aligner, regions, f)
            ct.measure_size(reference, "T2", regions, f)
            follow_up, baseline_uid, baseline_time = _baseline(store, study, patient_key, f, rules,
                                                               p003_pairing.Window(baseline_tolerance_days))
            start, start_study = studies.effective_treatment_start(store, study_uid, baseline_uid)
            result.inputs = {studies.TREATMENT_START: start.isoformat() if start else None,
                      studies.TREATMENT_START_STUDY: start_study, studies.BASELINE_STUDY: baseline_uid}
            base_scan = baseline_time or labs.scan_time
            if start is not None:
                problem = p003_pairing.treatment_start_problem(
                    start.date(), base_scan.date() if base_scan else None,
                    labs.scan_time.date() if follow_up and labs.scan_time else None)
                if problem:
                    f.note(problem)
            labs.anchor("003", *p003_pairing.lab_anchor(base_scan, start))
        step("models")
        result.model_results = run_cards(store, study_uid, f, labs, follow_up=follow_up, patient_key=patient_key)
        labs_used = labs.used
    for p in study.problems:
        f.note(p)
    result.measurements, result.missing = f.measurements, f.missing
    result.card_versions = sorted({f"{r['card_id']}@{r['card_version']}" for r in result.model_results})

    step("outputs")

    def send(path: Path) -> None:  # queued as soon as written: the SR need not wait for the summary
        for dest in destinations:
            if outbox.enqueue(store, dest, path.relative_to(store.data_dir), study_uid, job_id) is not None:
                result.queued += 1

    _outputs(store, study, image, reference, regions, f, result, labs_used, patient_key, job_id,
             Path(outputs_dir) if outputs_dir is not None else store.data_dir / OUTPUTS_DIR, send)
    step("done")
    timings.pop("start", None)
    result.timings = timings
    log.event("pipeline.done", study=study_uid, kind=kind, outputs=len(result.files), seconds=timings,
              measured=sum(m.value is not None for m in f.measurements),
              not_measured=sum(m.value is None for m in f.measurements) + len(f.missing), queued=result.queued)
    return result


def _reference(study: Study, kind: str) -> tuple[Series | None, Volume | None]:
    """The series ROIs, masks and the ECV map lie on, and its volume."""
    if kind == "mr":
        candidates = study.of_kind("mr_t2")
    elif kind in ("cect", "dect"):
        candidates = [s for p in CT_REFERENCE_PHASES for s in [study.ct(p)] if s is not None]
        candidates += [s for p in CT_REFERENCE_PHASES for s in [study.anatomy(p)] if s is not None]
    else:
        candidates = []
    for s in {s.uid: s for s in candidates}.values():
        vol = study.volume(s)
        if vol is not None:
            return s, vol
    return None, None


def _unenhanced_on(study: Study, aligner: Aligner, ref_series: Series) -> sitk.Image | None:
    """The unenhanced image on the reference grid, for telling the liver by its enhancement: the
    virtual unenhanced image of the reference's own dual-energy acquisition (same grid, nothing to
    register), else the true unenhanced phase through its registration; None when there is none
    or its registration is flagged."""
    vnc = study.first("dect_vnc", ref_series.phase) if ref_series.phase else None
    return _first_on_grid(study, aligner, ref_series, ((vnc, False), (study.ct("unenhanced"), True)))


def _portal_on(study: Study, aligner: Aligner, ref_series: Series) -> sitk.Image | None:
    """The portal venous phase on the reference grid through its registration, where the liver's
    veins are brightest (for placing liver ROIs clear of them); None when the reference is that
    phase, there is none, or its registration is flagged."""
    return _first_on_grid(study, aligner, ref_series, ((study.ct("portal_venous"), True),))


def _first_on_grid(study: Study, aligner: Aligner, ref_series: Series,
                   candidates: Sequence[tuple[Series | None, bool]]) -> sitk.Image | None:
    """The first of `candidates` (series, registered or in scanner coordinates) other than the
    reference that reads as a volume and comes onto the reference grid unflagged; None if none."""
    for series, register in candidates:
        vol = study.volume(series) if series is not None and series.uid != ref_series.uid else None
        if vol is None:
            continue
        aligned = aligner.through(vol, register=register)
        if aligned.ok and isinstance(aligned.image, sitk.Image):
            return aligned.image
    return None


def _baseline(store: Store, study: Study, patient_key: str | None, f: Findings, rules: RuleSet | None,
              window: p003_pairing.Window) -> tuple[bool, str | None, datetime | None]:
    """Paper 003 pairs baseline and follow-up (hccnode.models.p003_pairing, the rule the priors fetcher
    uses too): an earlier MR study of the same patient in the node 56-70 days before this one (plus the
    site tolerance) is the baseline; its values are measured again and reported beside this study's.
    Returns (True, the baseline's UID, its scan time) when this study is such a follow-up, else
    (False, None, None)."""
    if not patient_key:
        return False, None, None
    this_date, this_time = studies.study_date_time(store, study.uid) or (None, None)
    followup_date = p003_pairing.parse_date(this_date)
    if followup_date is None:
        f.note("baseline not paired: the study has no Study Date")
        return False, None, None
    rows = studies.earlier_studies(store, patient_key, study.uid, this_date, this_time, p003_pairing.MODALITY)
    if not rows:
        f.note("no earlier MR study of this patient in the node: this study is reported as a baseline")
        return False, None, None
    sel = p003_pairing.select_baseline(
        [p003_pairing.Candidate(r["study_uid"], p003_pairing.parse_date(r["study_date"]), r["study_time"] or "",
                                (p003_pairing.MODALITY,)) for r in rows], study.uid, followup_date, window)
    if sel.chosen is None:
        tried = "; ".join(f"MR study of {v.candidate.study_date or 'unknown date'} ({v.candidate.study_uid}): {v.reason}"
                          for v in sel.verdicts)
        f.note(f"baseline not paired for paper 003: this study is of {followup_date.isoformat()}, paper 003 pairs "
               f"a baseline {window.describe()}; {tried}. This study is reported as a baseline")
        return False, None, None
    base = Study.load(store, sel.chosen.study_uid, rules)
    t2_series = base.first("mr_t2")
    t2 = base.volume(t2_series) if t2_series is not None else None
    f.note(f"follow-up ({followup_date.isoformat()}) of the MR study of {sel.chosen.study_date.isoformat()} "
           f"({sel.chosen.study_uid}), measured as its baseline: {sel.reason}")
    when = base.scan_time(t2_series)
    if t2 is None:
        f.note("baseline values not measured: the baseline study has no readable T2 series")
        return True, base.uid, when
    aligner = Aligner(t2, base.uid)
    regions = reader_rois(base, t2, aligner)
    complete_mr(regions, t2)
    for note in lesions.apply(regions, tuple(reversed(t2.image.GetSpacing()))):
        f.note(f"baseline: {note}")
    aligner.limit_to(regions.boxes())
    if not regions.by_role("tumor"):
        f.note(f"baseline tumor not measured: {TUMOR_NOT_PLACED}")
    mr.measure_mr(base, t2, aligner, regions, f, when="baseline")
    for p in base.problems:
        f.note(f"baseline: {p}")
    return True, base.uid, when


def _previous_sr(store: Store, study_uid: str, sr_uid: str) -> pydicom.Dataset | None:
    """The SR the new one (`sr_uid`) replaces: the study's latest other SR. A re-run of an analysis
    already made keeps what that analysis replaced, so the same UID always has the same content."""
    rows = analyses.of_study(store, study_uid)
    files = {r["sr_uid"]: store.data_dir / r["out_dir"] / "sr.dcm" for r in rows}
    if sr_uid in files:
        if not files[sr_uid].exists():
            return None
        pred = pydicom.dcmread(files[sr_uid], stop_before_pixels=True).get("PredecessorDocumentsSequence")
        if not pred:
            return None
        old = str(pred[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        path = files.get(old)
    else:
        path = files[rows[-1]["sr_uid"]] if rows else None
    return pydicom.dcmread(path) if path is not None and path.exists() else None


def _image_series(store: Store, study: Study, patient_key: str | None) -> Series:
    """The study's first CT or MR image series that reads as a volume, for an SR that says nothing
    could be measured; a study without one is not one the analysis applies to (NotApplicable)."""
    for s in study.series:
        if s.modality in ("CT", "MR") and not _localizer(study, s) and study.volume(s) is not None:
            return s
    held = Counter(f"{s.modality or 'no modality'} {UID(s.sop_class).name}" for s in study.series
                   for _ in s.paths)
    reason = ("no CT or MR image series that can be read as a volume; the study holds "
              + "; ".join(f"{what} ({n} instance{'s' if n > 1 else ''})" for what, n in held.items())
              + "".join(f"; {p}" for p in study.problems))
    audit.append(store, "analysis.not_applicable", ACTOR, study_uid=study.uid, patient_key=patient_key, reason=reason)
    log.event("pipeline.not_applicable", study=study.uid, reason=reason)
    raise NotApplicable(f"study {study.uid}: not applicable: {reason}")


def _localizer(study: Study, series: Series) -> bool:
    """A localizer (scout, topogram): Image Type value 3 LOCALIZER (PS3.3 C.8.2.1.1.1 for CT;
    MR localizers written the same way). A projection to plan the scan, never a volume to measure."""
    image_type = study.headers(series)[0].get("ImageType") or []
    return "LOCALIZER" in [str(v).upper() for v in (image_type if isinstance(image_type, MultiValue) else [image_type])]


def _outputs(store: Store, study: Study, image: Series, reference: Volume | None, regions: Regions,
             f: Findings, result: Analysis, labs_used, patient_key: str | None, job_id: int | None,
             outputs_dir: Path, on_written: Callable[[Path], None]) -> None:
    by_uid = {s.uid: s for s in study.series}
    if reference is not None:
        ref = Reference.from_volume(reference, study.headers(image))
        images = sitk.GetArrayViewFromImage(reference.image)
        used = [by_uid[u] for u in sorted(f.series_used | {image.uid}) if u in by_uid]
    else:
        ref, images, used = Reference(study.headers(image)), None, [image]
    sources = [ds for s in used for ds in study.headers(s)] + list(regions.annotations)
    rois = [ReportRoi.adopt(r.ref, regions.array(r)) for r in regions.rois]  # the markers' masks, not copies
    template = load_template()
    key = analysis_key(sources, ref, rois, labs_used, result.model_results, template.digest)
    sr_uid = output_uids(key, ref.study_uid, ref.series_uid)["sr"][1]
    # Written in place, each file atomically, so each can be sent as soon as it is there. The same
    # SR UID means the same analysis, whose files are the same: a re-run rewrites them. The analysis
    # counts as made (analyses row) only once all are written.
    final = outputs_dir / study.uid / sr_uid
    files = build_outputs(sources, ref, rois, f.measurements, result.model_results, labs_used, final,
                          ecv_map=f.ecv_map, liver_mask=f.ecv_map_liver, images=images, missing=f.missing,
                          previous_sr=_previous_sr(store, study.uid, sr_uid), template=template,
                          data_dir=store.data_dir, on_written=on_written)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    sr = pydicom.dcmread(final / "sr.dcm", stop_before_pixels=True)
    if str(sr.SOPInstanceUID) != sr_uid:
        raise RuntimeError(f"the SR was written as {sr.SOPInstanceUID}, expected {sr_uid}")
    pred = sr.get("PredecessorDocumentsSequence")
    if pred:
        result.replaces = str(pred[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    result.out_dir = final
    result.files = [final / p.name for p in files]
    result.output_uids = uids
    for path, uid in zip(result.files, uids):
        audit.append(store, "output.created", ACTOR, study_uid=study.uid, patient_key=patient_key, output_uids=[uid],
                     card_versions=result.card_versions, file=path.name, job=job_id, replaces=result.replaces)
    analyses.record(store, study.uid, job_id, str(sr.SOPInstanceUID), final, uids, result.inputs)


def copy_outputs(analysis: Analysis, out: str | Path) -> list[Path]:
    """Copy an analysis' files (DICOM and the summary PDF / PNG) to `out`."""
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for p in sorted(analysis.out_dir.iterdir()) if analysis.out_dir else []:
        if p.is_file():
            copied.append(Path(shutil.copy2(p, dest / p.name)))
    return copied
