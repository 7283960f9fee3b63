"""Lab values at scan time: the closest usable result inside a paper's window.

Rules (each `Match` says which one applied):
- Patient: same Patient ID; the issuer must be equal when both the lab and the study carry one.
- Usable: the current row of its slot (not superseded or withdrawn) with a final or corrected
  status. Preliminary results are never used; they are mentioned when nothing else is there.
- Gap: signed time from scan to draw (negative: drawn before the scan). A time given only to
  the day or the hour covers that whole period, so its gap is taken at the far end of the period
  and it counts as "before" only if the whole period is before the scan (a time to the minute
  or second is taken as a point).
- Window: `Window.hours`, `side` and `limit` from labs.toml. An unpublished window is the site
  default and every match through it is flagged.
- Choice: the smallest gap. Ties: the result drawn before the scan (the papers use pre-treatment,
  pre-examination values), then the one received last.
- Censored results ("<5") are matched like others but carry no number (`value` is None).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hccnode.labs.catalog import Window
from hccnode.labs.values import as_aware
from hccnode.store.db import Store
from hccnode.store.labs import current_results

MATCHED, CENSORED, MISSING = "matched", "censored", "missing"


@dataclass(frozen=True)
class Match:
    test: str
    status: str  # matched | censored | missing
    reason: str
    window: Window
    value: float | None = None  # canonical unit, None unless matched
    unit: str | None = None
    value_text: str | None = None
    lab_id: int | None = None  # labs.id of the row used
    observed: str | None = None  # draw time as received
    gap_hours: float | None = None  # signed, negative = before the scan

    @property
    def flagged(self) -> bool:
        """True when the window was not published by the paper (site default used)."""
        return not self.window.published


def _gap_text(hours: float, anchor: str = "the scan") -> str:
    span = f"{abs(hours):.1f} h" if abs(hours) < 48 else f"{abs(hours) / 24:.1f} days"
    return f"{span} {'before' if hours < 0 else 'after'} {anchor}" if hours else f"at the time of {anchor}"


def _evaluate(row: dict, scan: float, window: Window) -> tuple[bool, float, float]:
    """(inside the window, worst-case distance in hours, signed gap in hours) for one row."""
    lo = row["observed_start"] - scan
    hi = row["observed_end"] - scan if row["observed_end"] - row["observed_start"] > 60 else lo
    worst = max(abs(lo), abs(hi)) / 3600
    side_ok = {"before": hi <= 0, "after": lo >= 0, "either": True}[window.side]
    within = worst <= window.hours if window.limit == "le" else worst < window.hours
    gap = hi if abs(hi) >= abs(lo) else lo
    return side_ok and within, worst, gap / 3600


def _rank(row: dict, worst: float, gap: float) -> tuple:
    return (worst, 0 if gap <= 0 else 1, -row["received_at"], -row["id"])


def match_lab(store: Store, patient_id: str, issuer: str | None, acquired: datetime, test: str,
              window: Window) -> Match:
    """The result of `test` for the patient closest to the scan time `acquired`, within `window`."""
    scan = as_aware(acquired).timestamp()
    rows = current_results(store, patient_id, issuer, test)
    finals = [r for r in rows if r["kind"] == "final"]
    scored = sorted((_rank(r, *_evaluate(r, scan, window)[1:]), r) for r in finals)
    inside = [(rank, r) for rank, r in scored if _evaluate(r, scan, window)[0]]
    wtext = window.describe()
    if not inside:
        if scored:
            _, r = scored[0]
            _, _, gap = _evaluate(r, scan, window)
            reason = f"nearest final {test} is {_gap_text(gap, window.anchor)}; window {wtext}"
        elif rows:
            reason = f"only preliminary {test} results; window {wtext}"
        else:
            reason = f"no {test} result for this patient"
        return Match(test, MISSING, reason, window)
    _, r = inside[0]
    _, _, gap = _evaluate(r, scan, window)
    tie = len(inside) > 1 and inside[1][0][0] == inside[0][0][0]
    why = (f"closest of {len(inside)} results in window {wtext}: {_gap_text(gap, window.anchor)}"
           + (" (tie: the one drawn before the scan / received last)" if tie else ""))
    common = dict(value_text=r["value_text"], lab_id=r["id"], observed=r["observed"], gap_hours=gap)
    if r["value"] is None:
        return Match(test, CENSORED, f"{why}; censored result {r['value_text']!r} {r['unit_text'] or ''} is not a number",
                     window, **common)
    return Match(test, MATCHED, why, window, value=r["value"], unit=r["unit"], **common)


def match_panel(store: Store, patient_id: str, issuer: str | None, acquired: datetime, tests: list[str],
                window: Window) -> dict[str, Match]:
    """Values of several tests from one draw (same observation time), the draw closest to the scan.

    For derived indices (NLR, SII ...) that must combine values measured together.
    """
    scan = as_aware(acquired).timestamp()
    by_time: dict[float, dict[str, dict]] = {}
    for test in tests:
        for r in current_results(store, patient_id, issuer, test):
            if r["kind"] == "final" and r["value"] is not None:
                by_time.setdefault(r["observed_start"], {})[test] = r
    complete = [d for d in by_time.values() if len(d) == len(tests)]
    names = ", ".join(tests)
    if not complete:
        reason = f"no draw with numeric values of all of {names}"
        return {t: Match(t, MISSING, reason, window) for t in tests}
    # A draw's time and precision are those of its first test (same observation time by construction).
    scored = sorted((_rank(d[tests[0]], *_evaluate(d[tests[0]], scan, window)[1:]), i, d)
                    for i, d in enumerate(complete))
    inside = [(rank, d) for rank, _, d in scored if _evaluate(d[tests[0]], scan, window)[0]]
    if not inside:
        _, _, gap = _evaluate(scored[0][2][tests[0]], scan, window)
        reason = f"nearest draw with all of {names} is {_gap_text(gap, window.anchor)}; window {window.describe()}"
        return {t: Match(t, MISSING, reason, window) for t in tests}
    draw = inside[0][1]
    _, _, gap = _evaluate(draw[tests[0]], scan, window)
    why = f"closest of {len(inside)} draws with all of {names} in window {window.describe()}: {_gap_text(gap, window.anchor)}"
    return {t: Match(t, MATCHED, why, window, value=r["value"], unit=r["unit"], value_text=r["value_text"],
                     lab_id=r["id"], observed=r["observed"], gap_hours=gap) for t, r in draw.items()}
