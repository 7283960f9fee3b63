"""CLI: `hccnode labs import FILE.csv | show PATIENT_ID | match PATIENT_ID | reprocess [ID ...]`.

`labs show` and `labs match` print a patient's results on the screen of the user who asked for them;
nothing here writes patient IDs to the log.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from hccnode.labs import catalog as catalog_mod
from hccnode.labs import csvimport, hl7v2
from hccnode.labs.csvimport import CsvImportError, import_csv
from hccnode.labs.matching import match_lab
from hccnode.labs.requeue import queue_jobs
from hccnode.store.labs import results_for
from hccnode.store.db import Store


def register(sub) -> None:
    p = sub.add_parser("labs", help="lab results: import CSV, show a patient's results, match to a scan",
                       description="Lab results from HL7 v2 (MLLP listener in `hccnode serve`) and CSV files.")
    labs = p.add_subparsers(dest="labs_command", metavar="LABS_COMMAND", required=True)

    imp = labs.add_parser("import", help="import lab results from a CSV file",
                          description=csvimport.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    imp.add_argument("file", help="CSV file")
    imp.add_argument("--skip-bad-rows", action="store_true", help="import the good rows and report the bad ones")
    imp.set_defaults(func=cmd_import)

    show = labs.add_parser("show", help="print a patient's lab results (on screen only)",
                           description="Print every stored result of a patient, including superseded and withdrawn ones.")
    show.add_argument("patient_id", help="the Patient ID as in the DICOM studies and lab messages")
    show.add_argument("--test", help="only this test (key, LOINC code or synonym)")
    show.set_defaults(func=cmd_show)

    rep = labs.add_parser("reprocess", help="retry HL7 messages answered AE, after fixing labs.toml",
                          description="Run HL7 messages that were answered AE (unknown unit, implausible value ...) "
                          "through the listener's processing again, e.g. after adding a unit to <data_dir>/labs.toml.")
    rep.add_argument("ids", nargs="*", type=int, help="labs_raw ids (default: every AE message)")
    rep.set_defaults(func=cmd_reprocess)

    match = labs.add_parser("match", help="the lab values a paper's model would use for a scan",
                            description="Match each test of a paper's window table to a scan time.")
    match.add_argument("patient_id", help="the Patient ID as in the DICOM studies and lab messages")
    match.add_argument("--issuer", help="issuer of the patient ID, if the study has one")
    match.add_argument("--at", required=True, help="scan time, ISO 8601 (local time unless an offset is given)")
    match.add_argument("--paper", required=True, help='paper number as in papers/, e.g. "000"')
    match.add_argument("--test", action="append", help="test(s) to match (default: the paper's tests)")
    match.set_defaults(func=cmd_match)


def _store_and_catalog(args) -> tuple[Store, catalog_mod.Catalog]:
    store = Store(args.cfg.data_dir)
    return store, catalog_mod.load(store.data_dir)


def cmd_import(args) -> int:
    from hccnode.cli import UsageError

    store, catalog = _store_and_catalog(args)
    try:
        report = import_csv(store, args.file, catalog, skip_bad_rows=args.skip_bad_rows)
    except FileNotFoundError:
        raise UsageError(f"{args.file}: no such file") from None
    except CsvImportError as exc:
        print(f"{exc}\nnothing imported (use --skip-bad-rows to import the good rows)", file=sys.stderr)
        return 1
    print(f"{report.file}: {report.rows} row(s) read, {report.imported} stored, {len(report.skipped)} skipped")
    requeued = queue_jobs(store, report.stored.changes, args.cfg.worker.max_attempts)
    if requeued:
        print(f"re-queued {len(requeued)} analysed stud{'y' if len(requeued) == 1 else 'ies'} whose lab inputs changed")
    for e in report.skipped:
        print(f"skipped: {e}")
    return 0


def cmd_show(args) -> int:
    store, catalog = _store_and_catalog(args)
    test = None
    if args.test:
        found = catalog.test(args.test)
        if not found:
            from hccnode.cli import UsageError
            raise UsageError(f"unknown test {args.test!r}")
        test = found.key
    rows = results_for(store, args.patient_id, test)
    if not rows:
        print("no results")
        return 0
    print(f"{'observed':<20} {'test':<12} {'value':>10} {'unit':<8} {'as received':<16} {'status':<6} {'state':<11} "
          f"{'issuer':<10} source")
    for r in rows:
        value = "" if r["value"] is None else f"{r['value']:.4g}"
        received = f"{r['value_text'] or ''} {r['unit_text'] or ''}".strip()
        source = f"{r['source']} {r['control_id'] or r['source_ref'] or ''}".strip()
        print(f"{r['observed']:<20} {(r['test'] or r['code']):<12} {value:>10} {r['unit'] or '':<8} {received[:16]:<16} "
              f"{r['status']:<6} {r['state']:<11} {r['issuer'] or '':<10} {source}")
    return 0


def cmd_reprocess(args) -> int:
    store, catalog = _store_and_catalog(args)
    done = hl7v2.reprocess(store, catalog, args.ids or None)
    for raw_id, stored in done:
        print(f"message {raw_id}: {'stored ' + str(stored.rows) + ' result(s)' if stored else 'rejected again (AE)'}")
    print(f"{len(done)} message(s) retried, {sum(s is not None for _, s in done)} accepted")
    return 0


def cmd_match(args) -> int:
    from hccnode.cli import UsageError

    store, catalog = _store_and_catalog(args)
    try:
        at = datetime.fromisoformat(args.at)
    except ValueError:
        raise UsageError(f"--at {args.at!r} is not an ISO 8601 date-time") from None
    tests = [catalog.test(t).key if catalog.test(t) else t for t in args.test] if args.test else \
        [t for (paper, t) in catalog.windows if paper == args.paper]
    if not tests:
        raise UsageError(f"paper {args.paper!r} has no tests in labs.toml; give --test")
    for t in tests:
        if t not in catalog.tests:
            raise UsageError(f"unknown test {t!r}")
        m = match_lab(store, args.patient_id, args.issuer, at, t, catalog.window(args.paper, t))
        value = f"{m.value:.4g} {m.unit}" if m.value is not None else (m.value_text or "-")
        flag = "  [window not published: site default]" if m.flagged else ""
        print(f"{t:<12} {m.status:<9} {value:<16} {m.reason}{flag}")
    return 0
