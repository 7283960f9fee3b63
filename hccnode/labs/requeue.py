"""Which analysed studies a new, corrected or withdrawn lab result changes.

An analysis records the lab values it used with `record_usage` (one row per paper and test,
with the scan time it matched against, including "missing"). When results arrive,
`studies_needing_requeue` re-runs the same matching for that patient's analysed studies and
returns those whose matched value is now different (a value appeared, was corrected, was
withdrawn). Studies never analysed are not returned: their first analysis will see the value.

Studies hold only `patient_key` = Store.patient_key(patient_id, issuer). The study's issuer is
found by trying the lab's issuer, no issuer, and every issuer seen with this patient ID in the
labs table (plus `extra_issuers`); a study whose issuer is none of these cannot be found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from hccnode.labs import catalog as catalog_mod
from hccnode.labs.matching import Match, match_lab, match_panel
from hccnode.store import labs as labs_store
from hccnode.store.db import Store
from hccnode.store.labs import Change


@dataclass(frozen=True)
class Requeue:
    study_uid: str
    reasons: tuple[str, ...]  # PHI-free, e.g. "paper 000 hct: was missing, now lab 12"


def record_usage(store: Store, study_uid: str, scan_time: datetime, paper: str, matches: list[Match] | dict,
                 panel: list[str] | None = None) -> None:
    """Remember which lab rows an analysis of `study_uid` used (call once per paper, after matching)."""
    items = list(matches.values()) if isinstance(matches, dict) else list(matches)
    ts = scan_time.timestamp() if scan_time.tzinfo else scan_time.astimezone().timestamp()
    labs_store.record_usage(store, study_uid, paper, ",".join(panel or ()), ts,
                            [(m.test, m.status, m.lab_id) for m in items])


def studies_needing_requeue(store: Store, patient_id: str, issuer: str | None = None,
                            tests: set[str] | None = None, catalog: catalog_mod.Catalog | None = None,
                            extra_issuers: tuple[str, ...] = ()) -> list[Requeue]:
    """Analysed studies of this patient whose lab match (for `tests`, default all) would now differ."""
    catalog = catalog or catalog_mod.load(store.data_dir)
    issuers: list[str | None] = [issuer, None, *extra_issuers]
    issuers += labs_store.issuers_of(store, patient_id)
    by_key = {}
    for i in issuers:
        by_key.setdefault(store.patient_key(patient_id, i), i)
    rows = labs_store.usage_of_patients(store, list(by_key))
    out: dict[str, list[str]] = {}
    panels: dict[tuple, dict[str, Match]] = {}
    for r in rows:
        panel = [t for t in r["panel"].split(",") if t]
        if tests and not (set(panel) | {r["test"]}) & tests:
            continue
        study_issuer = by_key[r["patient_key"]]
        scan = datetime.fromtimestamp(r["scan_time"], timezone.utc)
        window = catalog.window(r["paper"], panel[0] if panel else r["test"])
        if panel:
            key = (r["study_uid"], r["paper"], r["panel"])
            if key not in panels:
                panels[key] = match_panel(store, patient_id, study_issuer, scan, panel, window)
            new = panels[key][r["test"]]
        else:
            new = match_lab(store, patient_id, study_issuer, scan, r["test"], window)
        if (new.status, new.lab_id) != (r["status"], r["lab_id"]):
            was = f"lab {r['lab_id']}" if r["lab_id"] else r["status"]
            is_ = f"lab {new.lab_id}" if new.lab_id else new.status
            out.setdefault(r["study_uid"], []).append(f"paper {r['paper']} {r['test']}: was {was}, now {is_}")
    return [Requeue(uid, tuple(reasons)) for uid, reasons in out.items()]


def for_changes(store: Store, changes: list[Change], catalog: catalog_mod.Catalog | None = None) -> list[Requeue]:
    """`studies_needing_requeue` for every patient touched by a store call (e.g. `Stored.changes`)."""
    catalog = catalog or catalog_mod.load(store.data_dir)
    groups: dict[tuple[str, str | None], set[str]] = {}
    for ch in changes:
        groups.setdefault((ch.patient_id, ch.issuer), set()).add(ch.test)
    merged: dict[str, list[str]] = {}
    for (pid, issuer), tests in groups.items():
        for rq in studies_needing_requeue(store, pid, issuer, tests, catalog):
            merged.setdefault(rq.study_uid, []).extend(r for r in rq.reasons if r not in merged.get(rq.study_uid, []))
    return [Requeue(uid, tuple(reasons)) for uid, reasons in merged.items()]


def queue_jobs(store: Store, changes: list[Change], max_attempts: int = 3) -> list[tuple[str, int | None]]:
    """Re-queue the analysis of every study these lab changes affect; returns (study, job id)."""
    from hccnode import log
    from hccnode.store import jobs

    out = []
    for rq in for_changes(store, changes):
        job = jobs.requeue(store, rq.study_uid, "lab", max_attempts)
        log.event("study.requeued", study=rq.study_uid, job=job, why="; ".join(rq.reasons))
        out.append((rq.study_uid, job))
    return out
