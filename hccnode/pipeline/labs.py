"""Lab values at scan time for one analysis (hccnode.labs.matching), with their provenance.

Each paper's window comes from labs.toml, counted from the scan unless the pipeline gives the
paper another anchor with `Labs.anchor` (paper 003: treatment start, else the baseline MRI).
Every match (found or missing) is recorded with `requeue.record_usage` at the time it was counted
from, so a later or corrected result re-queues the study, and audited as
`lab.matched` (test, paper, status, lab row, gap; never the patient ID).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from hccnode.imaging.measure import LabRef
from hccnode.labs import catalog as catalog_mod
from hccnode.labs import indices
from hccnode.labs.catalog import Window
from hccnode.labs.matching import MATCHED, Match, match_lab, match_panel
from hccnode.labs.requeue import record_usage
from hccnode.store import audit
from hccnode.store.db import Store
from hccnode.store.labs import provenance


class Labs:
    """Lab matching for one study: patient and scan time fixed, results cached per paper and test."""

    def __init__(self, store: Store, study_uid: str, patient_id: str | None, issuer: str | None,
                 scan_time: datetime | None, patient_key: str | None = None):
        self.store, self.study_uid = store, study_uid
        self.patient_id, self.issuer, self.scan_time = patient_id, issuer, scan_time
        self.patient_key = patient_key
        self.catalog = catalog_mod.load(store.data_dir)
        self.used: list[LabRef] = []
        self._cache: dict[tuple, dict[str, Match]] = {}
        self._anchors: dict[str, tuple[datetime | None, str]] = {}

    def anchor(self, paper: str, when: datetime | None, label: str) -> None:
        """Match `paper`'s labs around `when` (named `label` in every reason) instead of the scan."""
        self._anchors[paper] = (when, label)

    def _around(self, paper: str, window: Window) -> tuple[datetime | None, Window]:
        """The time the paper's window is counted from, and the window named after it."""
        if paper not in self._anchors:
            return self.scan_time, window
        when, label = self._anchors[paper]
        return when, replace(window, anchor=label)

    def _unavailable(self, paper: str) -> str | None:
        if not self.patient_id:
            return "the study has no Patient ID to match lab results with"
        when, label = self._anchors.get(paper, (self.scan_time, ""))
        if when is None:
            return f"no time for {label} to match lab results with" if label else \
                "the study has no acquisition or study date to match lab results with"
        return None

    def value(self, paper: str, test: str) -> tuple[LabRef | None, str | None]:
        """The paper's `test` at scan time as a LabRef (canonical unit), or None and why not."""
        why = self._unavailable(paper)
        if why:
            return None, f"{test} for paper {paper}: {why}"
        key = (paper, test)
        if key not in self._cache:
            when, window = self._around(paper, self.catalog.window(paper, test))
            m = match_lab(self.store, self.patient_id, self.issuer, when, test, window)
            self._record(paper, when, {test: m}, None)
            self._cache[key] = {test: m}
        return self._ref(self._cache[key][test], paper)

    def index(self, paper: str, name: str) -> tuple[LabRef | None, str | None]:
        """A derived index (NLR ...) from one draw of its input tests (`match_panel`)."""
        tests = list(indices.INPUTS[name])
        why = self._unavailable(paper)
        if why:
            return None, f"{name} for paper {paper}: {why}"
        key = (paper, name)
        if key not in self._cache:
            when, window = self._around(paper, self.catalog.window(paper, tests[0]))
            matches = match_panel(self.store, self.patient_id, self.issuer, when, tests, window)
            self._record(paper, when, matches, tests)
            self._cache[key] = matches
        matches = self._cache[key]
        refs = []
        for t in tests:
            ref, reason = self._ref(matches[t], paper)
            if ref is None:
                return None, f"{name} for paper {paper}: {reason}"
            refs.append(ref)
        value = indices.compute(name, {r.name: r.value for r in refs})
        first = refs[0]
        ref = LabRef(name, value, indices.UNITS[name], first.time,
                     "; ".join(f"{r.name} {r.value:g} {r.unit} from {r.source}" for r in refs))
        self._use(ref)
        return ref, None

    def _ref(self, m: Match, paper: str) -> tuple[LabRef | None, str | None]:
        if m.status != MATCHED or m.value is None:
            return None, f"{m.test} for paper {paper}: {m.reason}"
        row = provenance(self.store, m.lab_id)
        when = datetime.fromtimestamp(row["observed_start"], timezone.utc).isoformat(timespec="seconds")
        if row["source"] == "hl7":
            source = f"hl7:{row['message_type'] or 'ORU^R01'} {row['control_id'] or ''}".strip()
        else:
            source = f"{row['source']}:{row['origin'] or ''}:{row['source_ref'] or ''}"
        if m.flagged or paper in self._anchors:  # a site default, or counted from other than the scan: say so
            source += f" (window: {m.window.describe()})"
        ref = LabRef(m.test, float(m.value), m.unit or "", when, source)
        self._use(ref)
        return ref, None

    def _use(self, ref: LabRef) -> None:
        if ref not in self.used:
            self.used.append(ref)

    def _record(self, paper: str, when: datetime, matches: dict[str, Match], panel: list[str] | None) -> None:
        record_usage(self.store, self.study_uid, when, paper, matches, panel)
        for m in matches.values():
            audit.append(self.store, "lab.matched", "pipeline", study_uid=self.study_uid, patient_key=self.patient_key,
                         paper=paper, test=m.test, status=m.status, lab=m.lab_id, gap_hours=m.gap_hours,
                         window=m.window.describe(), reason=m.reason)
