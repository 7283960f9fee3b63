"""CLI: `hccnode audit verify | show STUDY_UID | export --csv [FILE] | --sqlite FILE | reverify SR_FILE`.

verify, show and export open the database read-only: reading the audit log never changes it.
reverify recomputes an analysis on a scratch copy and appends only its own `analysis.reverified` event.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

from hccnode.store import audit


def register(sub) -> None:
    p = sub.add_parser("audit", help="the audit log: verify its hash chain, show a study's history, export",
                       description="The node's append-only, hash-chained record of every association, instance, "
                                   "job, decision, lab, model, output and send. No patient names, IDs or birth dates: "
                                   "patients appear as keyed hashes only.")
    asub = p.add_subparsers(dest="audit_command", metavar="AUDIT_COMMAND", required=True)

    def add(name: str, fn, help_: str, description: str) -> argparse.ArgumentParser:
        q = asub.add_parser(name, help=help_, description=description)
        q.add_argument("--db", metavar="FILE",
                       help="an audit database file (e.g. one written by `audit export --sqlite`) "
                            "instead of the node's DATA_DIR/hccnode.db")
        q.set_defaults(func=fn)
        return q

    q = add("verify", cmd_verify, "check the hash chain; exit 1 if any row was edited, removed or moved",
            "Recompute every row's hash and link from the first row on. Prints the head (last id and hash) "
            "when intact, exit 0; else names the first bad row and what is wrong (hash mismatch, broken link, "
            "gap in ids), exit 1. Keep the printed head elsewhere: rows cut off the end can only be shown "
            "against a head recorded earlier (--head).")
    q.add_argument("--head", metavar="ID:HASH",
                   help="a head printed by an earlier verify (or logged as audit.head at start-up): that row must "
                        "still be in the chain with that hash (else: truncated / head mismatch)")
    q = add("show", cmd_show, "print one study's history in order",
            "Every event recorded for a Study Instance UID, oldest first: time (UTC), id, event, actor, "
            "inputs, outputs, model cards and details.")
    q.add_argument("study_uid", help="Study Instance UID")
    q.add_argument("--since", help="only events at or after this ISO 8601 date or date-time (UTC unless an offset is given)")
    q = add("export", cmd_export, "export the log (all columns) as CSV, or as an audit-only SQLite file",
            "Write every column of every row, in chain order. --sqlite writes the audit table alone to a new "
            "file, to verify elsewhere or browse with Datasette without exposing the node's other tables.")
    fmt = q.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--csv", nargs="?", const="-", metavar="FILE", help="CSV with a header row, to FILE or standard output")
    fmt.add_argument("--sqlite", metavar="FILE", help="a new SQLite file holding only the audit table (FILE must not exist)")
    q.add_argument("--since", help="only events at or after this ISO 8601 date or date-time (UTC unless an offset is "
                                   "given); with --sqlite the copy is then not verifiable from row 1")

    q = asub.add_parser(
        "reverify", help="recompute an SR's analysis from the stored inputs; exit 1 unless every number is reproduced",
        description="Read an SR the node wrote (its own file, or one retrieved from the PACS), find its study in the "
                    "node's store, check the spool still holds every input instance it lists, run the analysis again "
                    "on a scratch copy of the database into a temporary folder (nothing is queued for sending and "
                    "the node's records of the original analysis stay as they were) and compare every number. "
                    "Same inputs are proven by the recomputed SR having the same UID (UIDs derive from all inputs); "
                    "an older SR is recomputed with the lab results and instances the node had when it was written. "
                    "Prints one line per number (ok / DIFFERS / only in one report) and the verdict, and records an "
                    "analysis.reverified audit event. Exit 0: every number reproduced; 1: a number differs, or the "
                    "SR's inputs cannot be recomputed (study unknown, instances gone, inputs changed), with the reason.")
    q.add_argument("sr_file", metavar="SR_FILE", nargs="?", help="the SR (DICOM file) to check")
    q.add_argument("--from-pacs", metavar="SR_UID",
                   help="instead of SR_FILE: retrieve the SR with this SOP Instance UID from the PACS ([priors] pacs, "
                        "else the first [forward] destination) by C-GET, into memory (it is not stored in the node)")
    q.add_argument("--study", metavar="STUDY_UID",
                   help="with --from-pacs: the SR's study, when the node has no record of writing that SR")
    q.add_argument("--rel-tol", type=float, default=0.0, metavar="R",
                   help="relative tolerance |a-b| <= R*max(|a|,|b|); default 0: the pipeline is deterministic, so "
                        "both the decimal (DS) and the double (FD) forms of each value must be equal")
    q.add_argument("--keep", metavar="DIR", help="copy the recomputed outputs (SR, SEG, map, summary) to DIR")
    q.set_defaults(func=cmd_reverify)


def _open(args) -> sqlite3.Connection:
    """A read-only connection to the audit database."""
    from hccnode.cli import UsageError

    path = Path(args.db) if args.db else args.cfg.db_path
    if not path.exists():
        if args.db:
            raise UsageError(f"{path}: no such file")
        raise FileNotFoundError(f"no database at {path}: the node has recorded nothing yet")
    return audit.open_read_only(path)


def _since(args) -> str | None:
    from hccnode.cli import UsageError

    if not args.since:
        return None
    try:
        return audit.parse_since(args.since)
    except audit.AuditError as exc:
        raise UsageError(f"--since: {exc}") from None


def cmd_verify(args) -> int:
    from hccnode.cli import UsageError

    expect = None
    if args.head:
        row_id, _, row_hash = args.head.partition(":")
        if not row_id.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", row_hash):
            raise UsageError(f"--head {args.head!r} is not ID:HASH (a row id and its 64-digit row_hash)")
        expect = (int(row_id), row_hash)
    with closing(_open(args)) as conn:
        verdict = audit.verify(conn, expect)
    print(verdict, file=sys.stdout if verdict.ok else sys.stderr)
    return 0 if verdict.ok else 1


def cmd_show(args) -> int:
    since = _since(args)
    n = 0
    with closing(_open(args)) as conn:
        for r in audit.rows(conn, study_uid=args.study_uid, since=since):
            extra = [f"{name}={r[col]}" for name, col in (("inputs", "input_hashes"), ("outputs", "output_uids"),
                                                         ("cards", "card_versions")) if r[col] not in ("[]", "{}")]
            print(f"{r['time']}  #{r['id']:<7} {r['event']:<21} {r['actor']:<16} {' '.join(extra + [r['details']])}")
            n += 1
    if not n:
        print("no audit events for this study")
    return 0


def cmd_export(args) -> int:
    from hccnode.cli import UsageError

    since = _since(args)
    with closing(_open(args)) as conn:
        if args.sqlite:
            try:
                n = audit.copy_to(conn, args.sqlite, since)
            except FileExistsError as exc:
                raise UsageError(str(exc)) from None
            print(f"{n} rows written to {args.sqlite}", file=sys.stderr)
        elif args.csv == "-":
            audit.write_csv(conn, sys.stdout, since)
        else:
            with open(args.csv, "w", encoding="utf-8", newline="") as f:
                n = audit.write_csv(conn, f, since)
            print(f"{n} rows written to {args.csv}", file=sys.stderr)
    return 0


def cmd_reverify(args) -> int:
    from hccnode.cli import UsageError
    from hccnode.imaging.phase_rules import RulesError, load_rules
    from hccnode.audit.reverify import PullError, check_sr, pull_sr, read_sr, results_uid, reverify
    from hccnode.store import analyses
    from hccnode.store.db import Store

    if args.rel_tol < 0:
        raise UsageError(f"--rel-tol must be >= 0, got {args.rel_tol}")
    if bool(args.sr_file) == bool(args.from_pacs):
        raise UsageError("give either an SR_FILE or --from-pacs SR_UID")
    if args.study and not args.from_pacs:
        raise UsageError("--study goes with --from-pacs")
    if args.from_pacs:
        from hccnode.net.priors import pacs_destination

        if pacs_destination(args.cfg) is None:
            raise UsageError("--from-pacs: no PACS configured: set [priors] pacs or a [forward] destination")
    if args.sr_file and not Path(args.sr_file).is_file():
        raise UsageError(f"{args.sr_file}: no such file")
    try:
        sr = read_sr(args.sr_file) if args.sr_file else None
        rules = load_rules(args.cfg.phases.rules_file or None)
    except (ValueError, RulesError) as exc:
        raise UsageError(str(exc)) from None
    if not args.cfg.db_path.exists():
        raise FileNotFoundError(f"no database at {args.cfg.db_path}: the node has recorded nothing yet")
    store = Store(args.cfg.data_dir)
    results = None
    try:
        if sr is None:
            study = args.study or analyses.study_of_sr(store, args.from_pacs)
            if not study:
                raise UsageError(f"the node has no record of writing SR {args.from_pacs}: give its study with --study")
            try:
                sr = check_sr(pull_sr(args.cfg, args.from_pacs, study), f"SR {args.from_pacs} from the PACS")
            except (PullError, ValueError) as exc:
                print(f"hccnode audit reverify: {exc}", file=sys.stderr)
                return 1
            print(f"retrieved SR {args.from_pacs} from the PACS")
            if results_uid(sr):
                try:  # its results SR (labs, models, notes); if the PACS lacks it, reverify looks in the node
                    results = pull_sr(args.cfg, results_uid(sr), study, "results")
                except PullError:
                    results = None
        from hccnode.pipeline.mr import site_adc_units

        with site_adc_units(args.cfg.adc.units):
            out = reverify(store, sr, rel_tol=args.rel_tol, rules=rules, keep=args.keep,
                           tolerance_days=args.cfg.priors.tolerance_days, results=results)
    finally:
        store.close()
    print(f"SR {out.sr_uid} of study {out.study_uid}")
    for note in out.notes:
        print(f"note: {note}")
    if out.rows:
        print("A = this SR, B = recomputed" + (f" ({out.recomputed_sr_uid})" if out.recomputed_sr_uid else ""))
        _table(out.rows)
    for p in out.problems:
        print(f"cannot recompute: {p}", file=sys.stderr)
    n_ok = sum(r.reproduced for r in out.rows)
    tol = f"relative tolerance {out.rel_tol:g}" if out.rel_tol else "exact"
    if out.verdict == "reproduced":
        print(f"reproduced: all {len(out.rows)} numbers ({tol})")
    elif out.verdict == "differs":
        print(f"DIFFERS: {len(out.rows) - n_ok} of {len(out.rows)} numbers not reproduced ({tol})")
    else:
        print("NOT RECOMPUTED: the SR's numbers could not be recomputed from the inputs it used"
              + (" (the table compares with a recomputation from other inputs, for information)" if out.rows else ""))
    return out.exit_code


def _table(rows) -> None:
    """One line per number: result, group (tracking identifier), measurement (concept and marker
    or algorithm), unit, A, B, and what differs."""
    lines = [("result", "group", "measurement", "unit", "A", "B", "")]
    for r in rows:
        result = "ok" if r.reproduced else ("only-A" if r.b is None else "only-B" if r.a is None else "DIFFERS")
        what = f"{r.meaning} ({r.concept})" + (f" {r.marker or r.algorithm}" if r.marker or r.algorithm else "")
        lines.append((result, r.group or "-", what, r.unit or "-", r.a.shown() if r.a else "-",
                      r.b.shown() if r.b else "-", f"({r.why})" if r.why and r.a and r.b else ""))
    widths = [max(len(line[i]) for line in lines) for i in range(6)]
    for line in lines:
        print("  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
              + ("  " + line[6] if line[6] else ""))
