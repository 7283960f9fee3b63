"""`reverify`: recompute an SR's analysis from the inputs the node stored and compare every number.

The analysis runs on a scratch copy of the node's database (SQLite backup API) with the node's
data directory (so the spool, lab catalog and model cards are the node's own), writing its
outputs to a temporary folder and queueing nothing. Everything `analyze_study` records (phase
decisions, lab usage, model results, the analyses row, its audit events) goes into the copy,
which is thrown away: the node's records gain one row only, the `analysis.reverified` event.

Whether the recomputation used the same inputs is not guessed: the SR's UID derives from every
input (instances, ROIs and masks, lab values, model cards and their inputs, software and
template versions; hccnode.report.uids), so the recomputed SR has the same UID exactly when its
inputs are the same. When the SR is an older analysis of the study (a lab result arrived or an
instance was received later), the copy is first rolled back to the node's inputs as they were
when that SR was written (rows received later removed, results they superseded current again).
The treatment start paper 003's labs were matched before is the one recorded with the SR's
analysis (hccnode.store.analyses `inputs`), not one set or cleared since (hccnode.store.studies).
If the UIDs still differ the node cannot reconstruct the SR's inputs, and the verdict says so
and why, rather than calling the numbers reproduced or different.

An analysis writes two SRs (hccnode.report.sr): the ROI SR, whose UID names the analysis, and
its results SR (laboratory values, model results, notes), listed in the ROI SR's evidence. The
numbers of both are compared; the results SR is taken beside the ROI SR's file, from the node's
outputs or, with --from-pacs, from the PACS.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from hccnode import log
from hccnode.config import PriorsSection
from hccnode.report.sr_compare import Row, compare, numbers
from hccnode.store import analyses, audit, studies
from hccnode.store.db import Store
from hccnode.store.scratch import scratch_copy

REPRODUCED, DIFFERS, NOT_RECOMPUTED = "reproduced", "differs", "not recomputed"
ACTOR = "audit reverify"
SR_SOP_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
LAB_GROUP = "Laboratory values"


@dataclass
class Outcome:
    sr_uid: str
    study_uid: str
    verdict: str = NOT_RECOMPUTED
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why the SR's inputs could not be recomputed
    notes: list[str] = field(default_factory=list)     # e.g. the SR is not the study's latest analysis
    recomputed_sr_uid: str | None = None
    rel_tol: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.verdict == REPRODUCED else 1


def read_sr(path: str | Path) -> Dataset:
    """The SR file; ValueError naming the problem when it is not a readable SR."""
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise ValueError(f"{path}: not a readable DICOM file ({exc})") from None
    return check_sr(ds, str(path))


def check_sr(ds: Dataset, path: str) -> Dataset:
    if not str(ds.get("SOPClassUID", "")).startswith(SR_SOP_PREFIX) or "ContentSequence" not in ds:
        raise ValueError(f"{path}: not a DICOM Structured Report")
    if "StudyInstanceUID" not in ds or "SOPInstanceUID" not in ds:
        raise ValueError(f"{path}: the SR has no Study or SOP Instance UID")
    return ds


class PullError(RuntimeError):
    """The SR could not be retrieved from the PACS (unreachable, refused, not there)."""


def pull_sr(cfg, sr_uid: str, study_uid: str, kind: str = "sr") -> Dataset:
    """The SR `sr_uid` of `study_uid`, retrieved from the PACS (`[priors] pacs`, else the first
    `[forward]` destination) by C-GET at IMAGE level into memory: nothing enters the spool. The
    Series Instance UID a C-GET needs is the node's SR series of the study (hccnode.report.outputs),
    so only SRs this node wrote can be pulled (`kind` "results": its results SR). No PACS
    configured: LookupError."""
    from hccnode import dicom_status as status
    from hccnode.net import scu
    from hccnode.net.forward import client_tls
    from hccnode.net.priors import pacs_destination
    from hccnode.report.outputs import output_uids

    pacs = pacs_destination(cfg)
    if pacs is None:
        raise LookupError("no PACS configured: set [priors] pacs or a [forward] destination")
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = study_uid
    ident.SeriesInstanceUID = output_uids("-", study_uid, "-")[kind][0]
    ident.SOPInstanceUID = sr_uid
    got: list[Dataset] = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        got.append(ds)
        return status.SUCCESS

    try:
        result = scu.get(pacs, ident, on_store, cfg.forward.ae_title, cfg.priors.timeout, client_tls(cfg))
    except (scu.AssociationFailed, scu.QueryFailed) as exc:
        raise PullError(f"retrieving SR {sr_uid} from {pacs}: {exc}") from None
    found = [ds for ds in got if str(ds.get("SOPInstanceUID", "")) == sr_uid]
    if not found:
        why = f"status 0x{result.status:04X}" + (f", {result.error}" if result.error else "")
        raise PullError(f"the PACS {pacs} returned no SR {sr_uid} of study {study_uid} ({why})")
    return found[0]


def evidence(sr: Dataset) -> dict[str, list[str]]:
    """Series UID -> SOP Instance UIDs the SR lists as evidence (Current Requested Procedure Evidence)."""
    out: dict[str, list[str]] = {}
    for study in sr.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            out.setdefault(str(series.SeriesInstanceUID), []).extend(
                str(i.ReferencedSOPInstanceUID) for i in series.get("ReferencedSOPSequence") or [])
    return out


def results_uid(sr: Dataset) -> str | None:
    """The SOP Instance UID of the results SR (labs, models, notes; hccnode.report.sr) the node's
    ROI SR lists among its evidence, or None (an SR written before the split, or the only one)."""
    from hccnode.report.outputs import output_uids

    series = output_uids("-", str(sr.StudyInstanceUID), "-")["results"][0]
    sops = evidence(sr).get(series) or []
    return sops[0] if sops else None


def find_results(store: Store, sr: Dataset) -> Dataset | None:
    """The results SR of `sr`: beside the SR's file, else in the node's output folder of that
    analysis; None when neither holds it."""
    uid = results_uid(sr)
    if uid is None:
        return None
    folders = [Path(sr.filename).parent] if isinstance(getattr(sr, "filename", None), str) else []
    folders += analyses.folders_of_sr(store, str(sr.SOPInstanceUID))
    for folder in folders:
        for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else []:
            try:  # headers first: the folder holds the SEG and the map too
                if str(pydicom.dcmread(path, stop_before_pixels=True).get("SOPInstanceUID", "")) == uid:
                    return pydicom.dcmread(path)
            except (OSError, pydicom.errors.InvalidDicomError):
                continue
    return None


def missing_inputs(store: Store, sr: Dataset) -> list[str]:
    """The SR's evidence the spool no longer holds (the node's own SEG and map excepted: they are
    outputs of the analysis, not inputs), one line per series."""
    from hccnode.report.outputs import output_uids

    study_uid = str(sr.StudyInstanceUID)
    listed = evidence(sr)
    own = {s for ref in listed for s, _ in output_uids("-", study_uid, ref).values()}
    problems = []
    for series, sops in listed.items():
        if series in own:
            continue
        absent = []
        for sop in sops:
            path = studies.instance_path(store, sop)
            if path is None or not (store.data_dir / path).is_file():
                absent.append(sop)
        if absent:
            problems.append(f"series {series}: {len(absent)} of {len(sops)} instance(s) not in the spool "
                            f"(first: {absent[0]})")
    return problems


def _recompute(store: Store, study_uid: str, where: Path, as_of: float | None, inputs: dict | None, rules,
               tolerance_days: float) -> list[Dataset]:
    from hccnode.pipeline import analyze_study

    where.mkdir(parents=True)
    scratch = scratch_copy(store, where, as_of)
    if inputs:  # the treatment start the SR's analysis used, not one set or cleared since
        studies.restore_recorded(scratch, study_uid, inputs)
    try:
        analysis = analyze_study(scratch, study_uid, rules=rules, outputs_dir=where / "outputs",
                                 baseline_tolerance_days=tolerance_days)
    finally:
        scratch.close()
    return [pydicom.dcmread(p) for p in (analysis.out_dir / "sr.dcm", analysis.out_dir / "sr_results.dcm")
            if p.exists()]


def input_differences(original: list[Dataset], recomputed: list[Dataset]) -> list[str]:
    """What the SR's UID says differs, as far as the two analyses' SRs show it (the ROI SR
    first in each list, then its results SR)."""
    out = []
    a, b = str(original[0].get("SoftwareVersions", "")), str(recomputed[0].get("SoftwareVersions", ""))
    if a != b:
        out.append(f"software version {a or '(none)'} in the SR, {b} now")
    ea = {s for sops in evidence(original[0]).values() for s in sops}
    eb = {s for sops in evidence(recomputed[0]).values() for s in sops}
    ea -= {results_uid(original[0])}
    eb -= {results_uid(recomputed[0])}
    if ea - eb:
        out.append(f"{len(ea - eb)} evidence instance(s) of the SR not used now (first: {sorted(ea - eb)[0]})")
    if eb - ea:
        out.append(f"{len(eb - ea)} instance(s) used now are not the SR's evidence (first: {sorted(eb - ea)[0]})")
    labs = [r for r in compare(original, recomputed) if r.group == LAB_GROUP and not r.reproduced]
    for r in labs:
        out.append(f"lab {r.meaning}: {r.a.shown() if r.a else 'none'} in the SR, {r.b.shown() if r.b else 'none'} now")
    models_a = {n.group for n in numbers(original) if n.group.startswith("Model ")}
    models_b = {n.group for n in numbers(recomputed) if n.group.startswith("Model ")}
    if models_a != models_b:
        out.append(f"model cards {sorted(models_a)} in the SR, {sorted(models_b)} now")
    if not out:
        out.append("the ROIs, their masks, the model cards' inputs or the SR template differ")
    return out


def reverify(store: Store, sr: Dataset, *, rel_tol: float = 0.0, rules=None, keep: str | Path | None = None,
             record: bool = True, tolerance_days: float = PriorsSection.tolerance_days,
             results: Dataset | None = None) -> Outcome:
    """Recompute `sr`'s analysis and compare (see the module docstring). `keep` copies the
    recomputed outputs there; `record` appends the `analysis.reverified` audit event;
    `tolerance_days` is the site's [priors] tolerance_days (paper 003's baseline pairing);
    `results` is the SR's results SR (labs, models, notes) when the caller has it, else it is
    looked for beside the SR's file and in the node's outputs (`find_results`)."""
    sr_uid, study_uid = str(sr.SOPInstanceUID), str(sr.StudyInstanceUID)
    out = Outcome(sr_uid, study_uid, rel_tol=rel_tol)
    patient_key = None
    if not studies.holds(store, study_uid):
        out.problems.append(f"study {study_uid} is not in the node's store: nothing to recompute from")
    else:
        patient_key = studies.patient_key(store, study_uid)
        out.problems += missing_inputs(store, sr)
    docs = [sr]
    if results_uid(sr) is not None:
        results = results if results is not None else find_results(store, sr)
        if results is None or str(results.SOPInstanceUID) != results_uid(sr):
            out.notes.append(f"the SR's results SR {results_uid(sr)} (laboratory values, model results, notes) is "
                             f"neither beside it nor in the node's outputs: its numbers are compared as absent")
        else:
            docs.append(results)
    if not out.problems:
        _run(store, docs, out, rules, keep, tolerance_days)
    log.event("audit.reverified", study=study_uid, sr=sr_uid, verdict=out.verdict, numbers=len(out.rows),
              reproduced=sum(r.reproduced for r in out.rows), problems=len(out.problems))
    if record:
        audit.append(store, "analysis.reverified", ACTOR, study_uid=study_uid, patient_key=patient_key,
                     output_uids=[sr_uid], verdict=out.verdict, rel_tol=rel_tol, numbers=len(out.rows),
                     reproduced=sum(r.reproduced for r in out.rows), recomputed_sr=out.recomputed_sr_uid,
                     differing=[f"{r.group}: {r.meaning} {r.marker}".strip() for r in out.rows if not r.reproduced][:50],
                     problems=out.problems, notes=out.notes)
    return out


def _run(store: Store, docs: list[Dataset], out: Outcome, rules, keep, tolerance_days: float) -> None:
    from hccnode.pipeline import StudyError
    rows = analyses.of_study(store, out.study_uid)
    mine = [r["created_at"] for r in rows if r["sr_uid"] == out.sr_uid]
    inputs = analyses.inputs_of(store, out.sr_uid) if mine else None
    if inputs and inputs.get(studies.TREATMENT_START):
        out.notes.append(f"paper 003's treatment start as the SR's analysis used it: {inputs[studies.TREATMENT_START]} "
                         f"(set on study {inputs[studies.TREATMENT_START_STUDY]})")
    as_of = None
    if not rows:
        out.notes.append("the node has no record of analysing this study")
    elif not mine:
        out.notes.append("this SR is not one of the node's recorded analyses of the study")
    elif rows[-1]["sr_uid"] != out.sr_uid:
        as_of = max(mine)
        out.notes.append(f"this SR is not the study's latest analysis (written {_when(as_of)}; latest is "
                         f"{rows[-1]['sr_uid']}, written {_when(rows[-1]['created_at'])})")
    tmp = Path(tempfile.mkdtemp(prefix="hccnode-reverify-"))
    try:
        try:
            # an older SR: first the inputs as they were when it was written, then the current ones
            attempts = [None] if as_of is None else [as_of, None]
            tried = []
            for i, when in enumerate(attempts):
                tried.append(_recompute(store, out.study_uid, tmp / str(i), when, inputs, rules, tolerance_days))
                if str(tried[-1][0].SOPInstanceUID) == out.sr_uid:
                    if when is not None:
                        out.notes.append("recomputed with the node's inputs as they were when this SR was written "
                                         "(lab results and instances received later left out)")
                    break
        except StudyError as exc:
            out.problems.append(f"the analysis cannot be recomputed: {exc}")
            return
        # no match: compare with the recomputation closest to the SR's inputs (the first), for information
        recomputed = tried[-1] if str(tried[-1][0].SOPInstanceUID) == out.sr_uid else tried[0]
        out.recomputed_sr_uid = str(recomputed[0].SOPInstanceUID)
        out.rows = compare(docs, recomputed, out.rel_tol)
        if out.recomputed_sr_uid != out.sr_uid:
            out.problems.append("the node cannot reconstruct the inputs this SR used (the recomputed SR has another "
                                "UID, so its inputs differ): " + "; ".join(input_differences(docs, recomputed)))
        else:
            out.verdict = REPRODUCED if all(r.reproduced for r in out.rows) else DIFFERS
        if keep:
            dest = Path(keep)
            dest.mkdir(parents=True, exist_ok=True)
            for p in sorted(Path(recomputed[0].filename).parent.iterdir()):
                if p.is_file():
                    shutil.copy2(p, dest / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")

