"""CLI: `hccnode analyze STUDY_UID` and `hccnode analyze --dicom-dir DIR` (by hand, the same
pipeline the node's workers run).

With --dicom-dir every file is stored as a C-STORE of it would be, or named with the reason it
was not (not DICOM, broken, missing UIDs...); then each study is analysed, or said to be not
applicable (no CT or MR image series readable as a volume) with the reason. Exit code 0 when
every study stored was analysed or is not applicable (files refused do not change it), 1 when
a study could not be analysed or no study was stored, 2 on a usage error."""

from __future__ import annotations

import logging
from pathlib import Path

from hccnode import RESEARCH_USE, log

STEPS = ("phases", "volumes", "rois", "markers", "models", "outputs", "done")


def register(sub) -> None:
    p = sub.add_parser(
        "analyze", help="analyse a study now: measurements, model cards, SR, ECV map, SEG and summary",
        description="Run the analysis pipeline on one study: phase decisions, ROIs (a reader's annotation in the "
                    "study wins, automatic ROIs otherwise), registration, the markers of papers 000-003, labs at "
                    "scan time from the node's store, the model cards, then SEG, ECV Parametric Map, TID 1500 SR "
                    "and a one-page summary, queued in the outbox for [forward] destinations. " + RESEARCH_USE)
    p.add_argument("study_uid", nargs="?", help="Study Instance UID of a study in the node's store")
    p.add_argument("--dicom-dir", metavar="DIR",
                   help="first store every DICOM file under DIR in the node (as a C-STORE would), then analyse "
                        "each study found there")
    p.add_argument("--out", metavar="OUTDIR", help="also copy the outputs (DICOM, summary PDF and PNG) to OUTDIR")
    p.add_argument("--no-forward", action="store_true", help="do not queue the outputs for the forward destinations")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--treatment-start", metavar="YYYY-MM-DD[THH:MM]",
                   help="the day (or time) treatment started, stored with the study as `hccnode studies "
                        "treatment-start` does: paper 003's labs are those of the 14 days before it (\"within 2 "
                        "weeks prior to treatment\"); without one, the 14 days before the baseline MRI")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from hccnode.cli import UsageError
    from hccnode.imaging.phase_rules import RulesError, load_rules
    from hccnode.models.engine import term_line
    from hccnode.pipeline import NotApplicable, StudyError, analyze_study
    from hccnode.pipeline.driver import copy_outputs
    from hccnode.pipeline.mr import site_adc_units
    from hccnode.store import studies as studies_mod
    from hccnode.store.db import Store

    if bool(args.study_uid) == bool(args.dicom_dir):
        raise UsageError("give either a STUDY_UID or --dicom-dir DIR")
    treatment_start = None
    if args.treatment_start:
        try:
            treatment_start = studies_mod.parse_treatment_start(args.treatment_start)
        except ValueError as exc:
            raise UsageError(f"--treatment-start: {exc}") from None
    try:
        rules = load_rules(args.cfg.phases.rules_file or None)
    except RulesError as exc:
        raise UsageError(str(exc)) from None
    store = Store.of(args.cfg)
    try:
        studies = [args.study_uid] if args.study_uid else ingest(store, Path(args.dicom_dir), not args.no_progress)
        if not studies:
            print(f"hccnode analyze: no DICOM study stored from {args.dicom_dir}")
            return 1
        destinations = [] if args.no_forward else list(args.cfg.forward.destinations)
        status = 0
        for uid in studies:
            bar = tqdm(total=len(STEPS), desc="analyze", unit="step", disable=args.no_progress, leave=False)

            def step(name: str) -> None:
                bar.set_postfix_str(name)
                bar.update(1)

            try:
                if treatment_start is not None:  # kept: the workers' later re-analyses use it too
                    studies_mod.set_treatment_start(store, uid, treatment_start, "hccnode analyze", requeue=False)
                with site_adc_units(args.cfg.adc.units):
                    analysis = analyze_study(store, uid, destinations=destinations, rules=rules, progress=step,
                                             baseline_tolerance_days=args.cfg.priors.tolerance_days)
            except NotApplicable as exc:
                print(f"hccnode analyze: {exc}")
                continue
            except LookupError as exc:  # --treatment-start for a study the node does not hold
                print(f"hccnode analyze: {exc}")
                status = 1
                continue
            except StudyError as exc:
                print(f"hccnode analyze: {exc}")
                status = 1
                continue
            except Exception:  # noqa: BLE001 - one study's failure never stops the others
                log.event("analyze.failed", level=logging.DEBUG, study=uid, exc_info=True)  # where, at [log] level DEBUG
                print(f"hccnode analyze: study {uid}: analysis failed (an internal error; [log] level DEBUG says where)")
                status = 1
                continue
            finally:
                bar.close()
            if treatment_start is not None:  # follow-ups paired with this study as their baseline
                for other, job in studies_mod.requeue_stale(store, uid, args.cfg.worker.max_attempts):
                    print(f"  queued again for its new treatment start: study {other} (job {job})")
            print(f"Study {uid} ({analysis.kind}): {sum(m.value is not None for m in analysis.measurements)} measured, "
                  f"{sum(m.value is None for m in analysis.measurements) + len(analysis.missing)} not measured")
            for m in analysis.measurements:
                where = f" [{m.roi.name}{' ' + m.roi.label if m.roi.label else ''}, {m.roi.source}]" if m.roi else ""
                shown = f"{m.value:.4g} {m.unit}" if m.value is not None else f"not measured: {m.reason}"
                print(f"  {m.marker}{where}: {shown}")
            for note in analysis.missing:
                print(f"  note: {note}")
            for r in analysis.model_results:
                out = r.get("outputs") or {}
                names = {"probability": "probability", "derived_points": "hccnode-derived points (not the paper's)",
                         "linear_predictor": "relative log-odds"}
                what = out.get("risk_group") or ", ".join(f"{v} {out[k]:.4g}" for k, v in names.items()
                                                          if isinstance(out.get(k), float))
                print(f"  model {r['card_id']} {r['card_version']}: {what or r['status']}")
                for term in out.get("terms") or []:
                    print(f"    term: {term_line(term)}")
                if out.get("direction_note"):
                    print(f"    {out['direction_note']}")
            print(f"  outputs: {analysis.out_dir}" + (f" (queued {analysis.queued})" if analysis.queued else ""))
            if args.out:
                copied = copy_outputs(analysis, Path(args.out) / uid if len(studies) > 1 else args.out)
                print(f"  copied {len(copied)} files to {copied[0].parent if copied else args.out}")
        print(RESEARCH_USE)
        return status
    finally:
        store.close()


def ingest(store, root: Path, progress: bool) -> list[str]:
    """Store every DICOM Part 10 file under `root` through the spool (the C-STORE path); returns the
    studies stored, in the order first seen. Files that are not DICOM are named and skipped."""
    from tqdm import tqdm

    from hccnode.store.spool import Spool, ingest_file

    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    spool = Spool(store)
    studies: dict[str, None] = {}
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in tqdm(files, desc="store", unit="file", disable=not progress, leave=False):
        try:
            result = ingest_file(spool, path, calling_ae="ANALYZE")
        except ValueError as exc:  # names the file and what is wrong with it
            print(f"hccnode analyze: skipped {path}: {exc}")
            continue
        except OSError as exc:
            print(f"hccnode analyze: skipped {path}: cannot be read ({exc.strerror or 'input/output error'})")
            continue
        if result.outcome in ("stored", "replaced", "duplicate"):
            studies[result.study_uid] = None
        else:
            print(f"hccnode analyze: {path} refused: {result.comment}")
    return list(studies)
