"""CLI commands of the DICOM node: serve, echo, send, studies, jobs, outbox."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

from hccnode.cli import UsageError
from hccnode import dicom_status as status
from hccnode.config import Destination, check_dicomweb_url, is_dicomweb, parse_destination
from hccnode.net import scu
from hccnode.net.forward import client_tls, drain_once
from hccnode.store import jobs, outbox
from hccnode.store.db import Store


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the node: DICOM listener, analysis workers, forwarder",
                       description="Run the node in the foreground until SIGTERM or Ctrl-C.")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("echo", help="C-ECHO a DICOM peer (default: this node)",
                       description="Verify a DICOM peer with C-ECHO; exit 0 if it answers success.")
    p.add_argument("target", nargs="?", help="AE@host:port (default: the configured node)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("send", help="send DICOM files to a peer through the outbox",
                       description="Queue FILEs in the outbox for DESTINATION and send them now. Rows that "
                                   "cannot be delivered stay queued and are retried by `hccnode serve`.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="DICOM Part 10 files or folders")
    p.add_argument("--to", required=True, metavar="AE@host:port|URL",
                   help="destination: a DICOM peer, or a DICOMweb base URL (STOW-RS; its options and credentials"
                        " come from [forward.dicomweb.\"URL\"])")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("studies", help="list received studies with series counts and job state",
                       description="One row per received study (patient identity is not shown).")
    p.add_argument("--limit", type=int, default=50, help="most rows to show (default 50)")
    p.set_defaults(func=cmd_studies)
    studies_sub = p.add_subparsers(dest="studies_command", metavar="{treatment-start}")
    t = studies_sub.add_parser(
        "treatment-start", help="set the date treatment started (paper 003's labs are the 14 days before it)",
        description="Set, for an MR study (the baseline or the follow-up), the day (or time) treatment started: "
                    "paper 003's labs are those \"obtained within 2 weeks prior to treatment\" (without a date, "
                    "the 14 days before the baseline MRI). A follow-up uses the date set on it, else the one set "
                    "on its baseline. Every analysed study whose date this changes is queued again, as a new lab "
                    "result queues it. Library: hccnode.store.studies.set_treatment_start.")
    t.add_argument("study", metavar="STUDY", help="Study Instance UID, or Accession Number of a study in the node")
    t.add_argument("date", nargs="?", metavar="YYYY-MM-DD[THH:MM]", help="the treatment start")
    t.add_argument("--clear", action="store_true", help="remove the study's treatment start instead")
    t.set_defaults(func=cmd_treatment_start)

    p = sub.add_parser("jobs", help="list analysis jobs",
                       description="Jobs of the durable queue, newest first. A job ends done, failed (after "
                                   "its attempts; the error is shown) or not_applicable (the study holds no CT or "
                                   "MR image series readable as a volume; the reason is shown; never retried).")
    p.add_argument("--state", choices=list(jobs.STATES), help="only jobs in this state")
    p.add_argument("--limit", type=int, default=50, help="most rows to show (default 50)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("outbox", help="list the outbox; retry failed rows",
                       description="Objects waiting to be sent, sent or failed, newest first.")
    p.add_argument("--state", choices=["pending", "sending", "sent", "failed"], help="only rows in this state")
    p.add_argument("--limit", type=int, default=50, help="most rows to show (default 50)")
    p.add_argument("--retry-failed", action="store_true", help="queue failed rows again, due now")
    p.set_defaults(func=cmd_outbox)


def _table(rows: list[dict], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _when(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def cmd_serve(args) -> int:
    from hccnode.node import Node

    Node(args.cfg).serve_forever()
    return 0


def cmd_echo(args) -> int:
    cfg = args.cfg
    dest = _destination(args.target) if args.target else Destination(cfg.node.ae_title, cfg.node.host, cfg.node.port)
    try:
        code = scu.echo(dest, cfg.forward.ae_title, args.timeout, client_tls(cfg))
    except scu.AssociationFailed as exc:
        print(f"echo {dest}: {exc}", file=sys.stderr)
        return 1
    print(f"echo {dest}: status 0x{code:04X}{' (success)' if code == status.SUCCESS else ''}")
    return 0 if code == status.SUCCESS else 1


def _destination(text: str) -> Destination:
    try:
        return parse_destination(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _dicomweb_url(text: str) -> str:
    try:
        return check_dicomweb_url(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _dicom_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"{p}: no such file or folder")
    return files


def cmd_send(args) -> int:
    dest = _dicomweb_url(args.to) if is_dicomweb(args.to) else _destination(args.to)
    store = Store(args.cfg.data_dir)
    ids, skipped = [], []
    for f in _dicom_files(args.files):
        try:
            row = outbox.enqueue(store, str(dest), f.resolve())
        except ValueError as exc:                      # names the file and what it lacks
            skipped.append(str(exc).replace(f.name, str(f), 1))
            continue
        except OSError as exc:
            skipped.append(f"{f}: cannot be read ({exc.strerror or 'input/output error'})")
            continue
        if row is not None:
            ids.append(row)
    for msg in skipped:
        print(f"skipped {msg}", file=sys.stderr)
    if not ids:
        print("nothing to send" + (" (all already queued)" if not skipped else ""), file=sys.stderr)
        return 1 if skipped else 0
    drain_once(store, args.cfg.forward, ids=ids, tls_ctx=client_tls(args.cfg))
    rows = outbox.open_rows(store, ids)
    sent = [r for r in rows if r["state"] == "sent"]
    for r in rows:
        if r["state"] != "sent":
            print(f"not sent: {r['path']}: {r['last_error']} (state {r['state']})", file=sys.stderr)
    print(f"sent {len(sent)} of {len(rows)} to {dest}"
          + ("" if len(sent) == len(rows) else "; the rest stay in the outbox for retry"))
    return 0 if len(sent) == len(rows) and not skipped else 1


def cmd_studies(args) -> int:
    store = Store(args.cfg.data_dir)
    rows = store.query(
        """SELECT s.study_uid, s.study_date, s.patient_key,
                  (SELECT GROUP_CONCAT(DISTINCT modality) FROM series WHERE study_uid = s.study_uid) AS modalities,
                  (SELECT COUNT(*) FROM series WHERE study_uid = s.study_uid) AS series,
                  (SELECT COUNT(*) FROM instances WHERE study_uid = s.study_uid) AS instances,
                  s.last_received,
                  (SELECT state FROM jobs WHERE study_uid = s.study_uid ORDER BY id DESC LIMIT 1) AS job
           FROM studies s ORDER BY s.last_received DESC LIMIT ?""", (args.limit,))
    for r in rows:
        r["last_received"] = _when(r["last_received"])
        r["job"] = r["job"] or "waiting"
    _table(rows, ["study_uid", "study_date", "patient_key", "modalities", "series", "instances", "last_received", "job"])
    return 0


def cmd_treatment_start(args) -> int:
    from hccnode.store import studies

    if bool(args.date) == args.clear:
        raise UsageError("give the treatment start date, or --clear")
    try:
        when = None if args.clear else studies.parse_treatment_start(args.date)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store = Store(args.cfg.data_dir)
    try:
        uid = studies.find_study(store, args.study)
        if uid is None:
            print(f"hccnode studies treatment-start: no study {args.study!r} in the node (neither a Study "
                  "Instance UID nor an Accession Number it holds)", file=sys.stderr)
            return 1
        done = studies.set_treatment_start(store, uid, when, "hccnode studies treatment-start",
                                           max_attempts=args.cfg.worker.max_attempts)
    except LookupError as exc:
        print(f"hccnode studies treatment-start: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    shown = when.isoformat() if when else "none"
    print(f"study {uid}: treatment start {shown}" + ("" if done.changed else " (unchanged)"))
    for other, job in done.requeued:
        print(f"  queued again: study {other} (job {job})")
    return 0


def cmd_jobs(args) -> int:
    store = Store(args.cfg.data_dir)
    rows = jobs.listing(store, args.state, args.limit)
    for r in rows:
        r["created_at"], r["finished_at"] = _when(r["created_at"]), _when(r["finished_at"])
    _table(rows, ["id", "kind", "study_uid", "study_seq", "reason", "state", "attempts", "created_at", "finished_at", "error"])
    return 0


def cmd_outbox(args) -> int:
    store = Store(args.cfg.data_dir)
    if args.retry_failed:
        print(f"queued again: {outbox.retry_failed(store)}")
    where, params = ("WHERE state = ?", [args.state]) if args.state else ("", [])
    rows = store.query(f"SELECT id, destination, sop_uid, state, attempts, next_attempt_at, last_status, last_error,"
                       f" sent_at FROM outbox {where} ORDER BY id DESC LIMIT ?", tuple(params + [args.limit]))
    for r in rows:
        r["next_attempt_at"], r["sent_at"] = _when(r["next_attempt_at"]), _when(r["sent_at"])
        if r["last_status"] is not None:
            r["last_status"] = f"0x{r['last_status']:04X}"
    _table(rows, ["id", "destination", "sop_uid", "state", "attempts", "next_attempt_at", "last_status", "last_error", "sent_at"])
    counts = outbox.counts(store)
    print("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "empty"))
    return 0


