"""Contrast phase and series kind of every series of a study, with confidence and reasons.

Pure classification over `SeriesHeader` records (hccnode.imaging.series_header) and, for CT,
measured aorta/liver attenuation (`PhaseMeasurement`, from hccnode.imaging.anatomy). File I/O and
the index live in hccnode.imaging.phase_index.

Evidence (all rules and thresholds are in the rules data file, hccnode/data/phase_rules.toml):
  header   ImageType, contrast tags, DICOM multi-energy attributes, b-values, vendor series names
  timing   delay after Contrast/Bolus Start Time; without it, the order and gaps of the
           acquisitions against the injection windows of papers 000 and 001 (see the data file)
  image    aorta and liver HU of the series itself; series of the same acquisition (DECT maps,
           other reconstructions) share header and image evidence at a reduced weight
  relation aorta and liver of every enhanced acquisition against each other, with the acquisition
           order where times, series or instance numbers give it (hccnode.imaging.phase_relations)
Every vote carries its rule name and the values that made it fire. A series whose evidence is
weak or contradictory is reported "ambiguous" with those reasons, never given a phase silently.

Kinds reported: ct_unenhanced, ct_arterial, ct_portal_venous, ct_equilibrium, dect_iodine,
dect_vmi (with kev), dect_vnc, mr_t2, mr_dwi (with b_values), mr_adc, other, ambiguous.
DECT kinds also carry the contrast phase of their acquisition (`phase`, `phase_confidence`).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hccnode.imaging.phase_relations import Acquisition, RelationParams, relate_phases
from hccnode.imaging.phase_rules import KINDS, PHASES, RELATION_MARGINS, Rule, RuleSet
from hccnode.imaging.series_header import SeriesHeader

ENHANCED = frozenset({"arterial", "portal_venous", "equilibrium"})
CT_FAMILY = frozenset({"ct", "dect_iodine", "dect_vmi", "dect_vnc"})
AMBIGUOUS = "ambiguous"
TIME_KEY = "acquisition time (s after the first)"


@dataclass(frozen=True)
class Vote:
    source: str                 # header | timing | image | relation | sibling-header | sibling-image
    rule: str
    axis: str                   # kind | phase
    labels: frozenset[str]
    weight: float
    values: dict[str, Any] = field(default_factory=dict)
    series_uid: str = ""        # for sibling votes: the series the evidence came from

    def reason(self) -> dict[str, Any]:
        r = {"source": self.source, "rule": self.rule, "axis": self.axis,
             "votes": "|".join(sorted(self.labels)), "weight": round(self.weight, 3), "values": self.values}
        if self.series_uid:
            r["from_series"] = self.series_uid
        return r


@dataclass
class PhaseMeasurement:
    """Attenuation measured on one CT series (HU); None where the structure was not found."""

    aorta_hu: float | None = None
    liver_hu: float | None = None
    air_fraction: float | None = None
    median_value: float | None = None      # of all voxels, in the series' real-world units
    p99_value: float | None = None
    notes: tuple[str, ...] = ()


@dataclass
class Decision:
    series_uid: str
    study_uid: str
    series_number: int | None
    series_description: str
    kind: str
    confidence: float
    phase: str | None = None               # contrast phase (CT and DECT kinds)
    phase_confidence: float | None = None
    kev: float | None = None
    b_values: tuple[float, ...] = ()
    reasons: list[dict[str, Any]] = field(default_factory=list)
    measurement: PhaseMeasurement | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {"series_uid": self.series_uid, "study_uid": self.study_uid, "series_number": self.series_number,
             "series_description": self.series_description, "kind": self.kind,
             "confidence": round(self.confidence, 3), "phase": self.phase,
             "phase_confidence": None if self.phase_confidence is None else round(self.phase_confidence, 3),
             "kev": self.kev, "b_values": list(self.b_values), "reasons": self.reasons}
        if self.measurement is not None:
            d["measurement"] = {"aorta_hu": _r(self.measurement.aorta_hu), "liver_hu": _r(self.measurement.liver_hu),
                                "air_fraction": _r(self.measurement.air_fraction, 4),
                                "notes": list(self.measurement.notes)}
        return d


def _r(v: float | None, n: int = 1) -> float | None:
    return None if v is None else round(float(v), n)


# ------------------------------------------------------------------ evidence combination

def combine(votes: Iterable[Vote], labels: Sequence[str]) -> dict[frozenset[str], float]:
    """Dempster's rule over simple support functions: each vote puts its weight on its label set
    and the rest on "don't know" (all labels). Returns the normalised masses; a total conflict
    (impossible with weights < 1) returns all mass on "don't know"."""
    theta = frozenset(labels)
    masses = {theta: 1.0}
    for v in votes:
        s = frozenset(v.labels) & theta
        if not s:
            continue
        new: dict[frozenset[str], float] = {}
        for a, ma in masses.items():
            for b, mb in ((s, v.weight), (theta, 1.0 - v.weight)):
                c = a & b
                if c:
                    new[c] = new.get(c, 0.0) + ma * mb
        total = sum(new.values())
        masses = {k: m / total for k, m in new.items()} if total > 1e-12 else {theta: 1.0}
    return masses


def beliefs(votes: Iterable[Vote], labels: Sequence[str]) -> dict[str, float]:
    """Belief per label: the combined mass committed to exactly that label (see `combine`)."""
    m = combine(votes, labels)
    return {label: m.get(frozenset({label}), 0.0) for label in labels}


def set_belief(votes: Iterable[Vote], labels: Sequence[str], subset: Iterable[str]) -> float:
    """Combined mass committed to labels inside `subset` (e.g. "some enhanced phase")."""
    sub = frozenset(subset)
    return sum(m for k, m in combine(votes, labels).items() if k <= sub)


def decide(votes: Sequence[Vote], labels: Sequence[str], rules: RuleSet) -> tuple[str | None, float, list[tuple[str, float]]]:
    """(label or None when undecided, its belief, ranking of candidates with belief > 0)."""
    b = beliefs(votes, labels)
    ranking = sorted(((k, v) for k, v in b.items() if v > 0), key=lambda kv: -kv[1])
    if not ranking:
        return None, 0.0, []
    best, top = ranking[0]
    second = ranking[1][1] if len(ranking) > 1 else 0.0
    if top >= rules.decide_at and top - second >= rules.margin:
        return best, top, ranking
    return None, top, ranking


def rule_votes(rules: Iterable[Rule], record: dict[str, Any], source: str) -> list[Vote]:
    """Votes of every rule that fires on `record`; fallback rules only on an axis nobody voted on."""
    fired: list[Vote] = []
    fallbacks: list[tuple[Rule, dict]] = []
    for rule in rules:
        ok, values = rule.fires(record)
        if not ok:
            continue
        if rule.fallback:
            fallbacks.append((rule, values))
        else:
            fired.append(Vote(source, rule.name, rule.axis, rule.labels, rule.weight, values))
    axes = {v.axis for v in fired}
    for rule, values in fallbacks:
        if rule.axis not in axes:
            fired.append(Vote(source, rule.name, rule.axis, rule.labels, rule.weight, values))
    return fired


# ------------------------------------------------------------------ timing

@dataclass
class _Group:
    index: int
    series: list[SeriesHeader]
    time_s: float | None

    @property
    def uids(self) -> list[str]:
        return [h.series_uid for h in self.series]


def acquisition_groups(headers: Sequence[SeriesHeader], tolerance_s: float) -> list[_Group]:
    """Series of one acquisition: acquisition times within `tolerance_s` of their neighbour."""
    timed = sorted((h for h in headers if h.acquisition_s is not None), key=lambda h: h.acquisition_s)
    groups: list[_Group] = []
    for h in timed:
        if groups and h.acquisition_s - groups[-1].series[-1].acquisition_s <= tolerance_s:
            groups[-1].series.append(h)
        else:
            groups.append(_Group(len(groups), [h], h.acquisition_s))
    for h in headers:
        if h.acquisition_s is None:
            groups.append(_Group(len(groups), [h], None))
    return groups


def bolus_delay_vote(delay_s: float, rules: RuleSet) -> Vote | None:
    """Phase from the delay after Contrast/Bolus Start Time (windows from the rules file)."""
    w = rules.timing["bolus_weight"]
    values = {"delay_after_bolus_start_s": round(delay_s, 1)}
    if delay_s < 0:
        return Vote("timing", "acquired-before-bolus-start", "phase", frozenset({"unenhanced"}), w, values)
    for phase, (lo, hi) in rules.windows.items():
        if lo <= delay_s <= hi:
            return Vote("timing", f"bolus-delay-{phase}", "phase", frozenset({phase}), w,
                        {**values, "window_s": [lo, hi]})
    return None


def relative_timing_votes(times: Sequence[float], status: Sequence[str], rules: RuleSet) -> tuple[list[Vote | None], dict[str, Any]]:
    """Phases of acquisitions (sorted by time) from their gaps, without a bolus start time.

    `status[i]` is "U" (known unenhanced), "E" (known enhanced) or "?" for acquisition i.
    Every labelling that keeps phases in time order, puts unenhanced acquisitions before the
    injection and every enhanced one inside its window for some injection time is feasible;
    among those, the ones using the most distinct enhanced phases are preferred (a liver
    protocol rarely repeats a phase). An acquisition gets a vote only when all preferred
    labellings agree on it. Returns (vote or None per acquisition, summary for the reasons).
    """
    windows = rules.windows
    order = ["unenhanced", "arterial", "portal_venous", "equilibrium"]
    n = len(times)
    feasible: list[tuple[str, ...]] = []
    for labels in itertools.product(order, repeat=n):
        if any(order.index(a) > order.index(b) for a, b in zip(labels, labels[1:])):
            continue
        if any((s == "U" and lab != "unenhanced") or (s == "E" and lab == "unenhanced") for s, lab in zip(status, labels)):
            continue
        lo, hi = -math.inf, math.inf   # injection time interval
        for t, lab in zip(times, labels):
            if lab == "unenhanced":
                lo = max(lo, t)
            else:
                wlo, whi = windows[lab]
                lo, hi = max(lo, t - whi), min(hi, t - wlo)
        if lo <= hi and any(lab != "unenhanced" for lab in labels):
            feasible.append(labels)
    summary: dict[str, Any] = {"gaps_s": [round(b - a, 1) for a, b in zip(times, times[1:])]}
    if not feasible:
        summary["result"] = "no labelling fits the timing windows"
        return [None] * n, summary
    best = max(len({lab for lab in f if lab != "unenhanced"}) for f in feasible)
    preferred = [f for f in feasible if len({lab for lab in f if lab != "unenhanced"}) == best]
    summary["fits"] = [list(f) for f in preferred[:5]]
    if len(preferred) > 5:
        summary["more_fits"] = len(preferred) - 5
    votes: list[Vote | None] = []
    for i in range(n):
        labs = {f[i] for f in preferred}
        if len(labs) == 1:
            (lab,) = labs
            votes.append(Vote("timing", "relative-timing", "phase", frozenset({lab}), rules.timing["relative_weight"],
                              {"position": i + 1, "of": n, **summary}))
        else:
            votes.append(None)
    return votes, summary


# ------------------------------------------------------------------ the study

def classify_study(headers: Sequence[SeriesHeader], rules: RuleSet,
                   measure: Callable[[SeriesHeader], PhaseMeasurement | None] | None = None,
                   map_measure: Callable = map) -> list[Decision]:
    """Decide kind and phase of every series of one study.

    `measure(header)` returns the aorta/liver measurement of a CT series (or None when its
    pixels cannot be read); it is called only for series the image policy of the rules file
    selects, through `map_measure` (e.g. a thread pool's map: the series are independent).
    Decisions come back in the order of `headers`.
    """
    header_votes = {h.series_uid: rule_votes(rules.header_rules, h.record(), "header") for h in headers}
    header_kind = {uid: decide(_axis(vs, "kind"), KINDS, rules)[0] for uid, vs in header_votes.items()}
    phase_hv = {uid: _axis(vs, "phase") for uid, vs in header_votes.items()}

    ct = [h for h in headers if header_kind[h.series_uid] in CT_FAMILY
          or (header_kind[h.series_uid] is None and h.modality == "CT")]
    groups = acquisition_groups(ct, float(rules.timing["group_tolerance_s"]))
    group_of = {uid: g for g in groups for uid in g.uids}
    timing_votes, timing_notes = _bolus_timing(groups, rules)

    measured: dict[str, PhaseMeasurement] = {}
    if measure is not None and rules.image["use"] != "never":
        selected = []
        for h in ct:
            if not _measurable(h, header_kind[h.series_uid], rules):
                continue
            if rules.image["use"] == "when_needed":
                own = phase_hv[h.series_uid] + timing_votes[group_of[h.series_uid].index]
                if decide(own, PHASES, rules)[1] >= rules.image["confirm_below"]:
                    continue
            selected.append(h)
        for h, m in zip(selected, map_measure(measure, selected)):
            if m is not None:
                measured[h.series_uid] = m
    image_votes = _image_votes(measured, group_of, rules)
    kind_votes = {uid: _axis(vs, "kind") + _axis(image_votes.get(uid, []), "kind") for uid, vs in header_votes.items()}
    final_kind = {uid: decide(vs, KINDS, rules) for uid, vs in kind_votes.items()}
    # Image phase evidence counts only from images showing the acquisition as it was (not VNC,
    # not iodine maps).
    phase_iv = {uid: _axis(vs, "phase") for uid, vs in image_votes.items()
                if final_kind[uid][0] in ("ct", "dect_vmi", None)}

    relation_votes, relation_notes, times_contradicted = _relations(groups, measured, phase_iv, rules)

    relative_summary = None
    if not any(timing_votes[g.index] or timing_notes[g.index] for g in groups):
        relative_summary = _relative_timing(groups, phase_hv, phase_iv, timing_votes, rules)
        # Relative timing reads the same times that the images contradict: set it aside there.
        for gi in times_contradicted:
            if any(v.rule == "relative-timing" for v in timing_votes[gi]):
                timing_votes[gi] = [v for v in timing_votes[gi] if v.rule != "relative-timing"]
                relation_notes.setdefault(gi, []).append({"source": "relation", "rule": "relative-timing-set-aside", "values": {
                    "why": "the acquisition times disagree with the enhancement relations (see relation-undecided)"}})

    decisions = []
    for h in headers:
        uid = h.series_uid
        kind, kconf, kranking = final_kind[uid]
        d = Decision(uid, h.study_uid, h.series_number, h.series_description, kind or AMBIGUOUS, kconf,
                     measurement=measured.get(uid))
        reasons = [v.reason() for v in kind_votes[uid]] + _conflicts(kind_votes[uid], KINDS, "kind")
        if kind is None:
            reasons.append({"source": "decision", "rule": "kind-undecided", "candidates": _cands(kranking)})
        if kind == "dect_vmi":
            d.kev = h.kev if h.kev is not None else h.text_kev
        if kind in ("mr_dwi", "mr_adc") and h.b_values:
            d.b_values = h.b_values
            reasons.append({"source": "header", "rule": "b-values",
                            "values": {"b_values": list(h.b_values), "from": list(h.b_value_sources)}})
        if kind in CT_FAMILY or (kind is None and uid in group_of):
            g = group_of[uid]
            pv = phase_hv[uid] + timing_votes[g.index] + phase_iv.get(uid, []) + relation_votes.get(g.index, [])
            # Other series of the acquisition; one fact (a rule firing for the same labels) counts
            # once, however many reconstructions repeat it.
            seen = {(v.rule, v.labels) for v in pv}
            for sib in g.series:
                if sib.series_uid == uid:
                    continue
                for source, votes in (("sibling-header", phase_hv[sib.series_uid]),
                                      ("sibling-image", phase_iv.get(sib.series_uid, []))):
                    for v in votes:
                        if (v.rule, v.labels) not in seen:
                            seen.add((v.rule, v.labels))
                            pv.append(_scaled(v, source, rules.sibling_factor, sib.series_uid))
            phase, pconf, pranking = decide(pv, PHASES, rules)
            d.phase, d.phase_confidence = phase, pconf
            reasons += [v.reason() for v in pv] + timing_notes[g.index] + relation_notes.get(g.index, [])
            if relative_summary is not None and g.time_s is not None and not any(v.rule == "relative-timing" for v in pv):
                reasons.append({"source": "timing", "rule": "relative-timing-undecided", "values": relative_summary})
            reasons += _conflicts(pv, PHASES, "phase")
            if phase is None:
                reasons.append({"source": "decision", "rule": "phase-undecided", "candidates": _cands(pranking)})
            if uid not in measured and kind in ("ct", None):
                reasons.append({"source": "image", "rule": "not-measured",
                                "values": {"why": "image confirmation not run or pixels unreadable"}})
            if kind == "ct":
                d.kind = AMBIGUOUS if phase is None else f"ct_{phase}"
                d.confidence = kconf * pconf
        d.reasons = reasons
        decisions.append(d)
    named = {g.index for g in groups if any(phase_hv[h.series_uid] for h in g.series)
             or any(v.rule != "relative-timing" for v in timing_votes[g.index])}
    unnamed = {uid for uid, g in group_of.items() if g.index not in named}
    _repeated_phases(decisions, group_of, unnamed)
    return decisions


def _repeated_phases(decisions: list[Decision], group_of: dict[str, _Group], unnamed: set[str]) -> None:
    """A liver protocol acquires each enhanced phase once. When images and relative timing alone (no
    header names the phase, no bolus start time) give one enhanced phase to conventional CT series of
    two acquisitions, at most one can be right and nothing says which: all of them, and the other
    series of their acquisitions, become ambiguous, with the reason."""
    by_phase: dict[str, set[int]] = {}
    for d in decisions:
        if d.series_uid in unnamed and d.kind in ("ct_arterial", "ct_portal_venous", "ct_equilibrium"):
            by_phase.setdefault(d.phase, set()).add(group_of[d.series_uid].index)
    for phase, groups in by_phase.items():
        if len(groups) < 2:
            continue
        names = sorted({str(d.series_number) for d in decisions if d.series_uid in group_of
                        and group_of[d.series_uid].index in groups and d.kind == f"ct_{phase}"})
        for d in decisions:
            if d.series_uid in group_of and group_of[d.series_uid].index in groups and d.phase == phase:
                if d.kind == f"ct_{phase}":
                    d.kind = AMBIGUOUS
                d.phase, d.phase_confidence = None, 0.0
                d.reasons.append({"source": "decision", "rule": "phase-repeated", "values": {
                    "phase": phase, "series": names,
                    "why": "the images and relative timing give this phase to more than one acquisition; "
                           "a liver protocol acquires it once and nothing says which one it is"}})


def _axis(votes: Iterable[Vote], axis: str) -> list[Vote]:
    return [v for v in votes if v.axis == axis]


def _bolus_timing(groups: Sequence[_Group], rules: RuleSet) -> tuple[dict[int, list[Vote]], dict[int, list[dict]]]:
    """Phase votes (and notes for delays between windows) per acquisition from the bolus start."""
    votes: dict[int, list[Vote]] = {g.index: [] for g in groups}
    notes: dict[int, list[dict]] = {g.index: [] for g in groups}
    for g in groups:
        delays = [d for d in (_delay(h) for h in g.series) if d is not None]
        if not delays:
            continue
        d = statistics.median(delays)
        vote = bolus_delay_vote(d, rules)
        if vote:
            votes[g.index].append(vote)
        else:
            notes[g.index].append({"source": "timing", "rule": "bolus-delay-between-windows",
                                   "values": {"delay_after_bolus_start_s": round(d, 1)}})
    return votes, notes


def _relative_timing(groups: Sequence[_Group], phase_hv: dict[str, list[Vote]], phase_iv: dict[str, list[Vote]],
                     timing_votes: dict[int, list[Vote]], rules: RuleSet) -> dict[str, Any] | None:
    """Add relative-timing votes to `timing_votes`; returns the summary for the reasons."""
    timed = [g for g in groups if g.time_s is not None]
    if not timed:
        return None
    if len(timed) > int(rules.timing["max_groups"]):
        return {"result": f"skipped: {len(timed)} acquisitions (max_groups {rules.timing['max_groups']})"}
    status = [_status(g, phase_hv, phase_iv, rules) for g in timed]
    votes, summary = relative_timing_votes([g.time_s for g in timed], status, rules)
    for g, v in zip(timed, votes):
        if v is not None:
            timing_votes[g.index].append(v)
    return summary


def _relations(groups: Sequence[_Group], measured: dict[str, PhaseMeasurement], phase_iv: dict[str, list[Vote]],
               rules: RuleSet) -> tuple[dict[int, list[Vote]], dict[int, list[dict]], set[int]]:
    """Phase votes (and notes when undecided) per acquisition from the study's enhancement relations
    (hccnode.imaging.phase_relations): every acquisition whose own images show contrast, measured on
    its conventional-looking series (median over them), ordered by time, series and instance numbers.
    Also returns the acquisitions whose times contradict every order their images allow."""
    cfg = rules.relations
    if not cfg.get("use", True):
        return {}, {}, set()
    acqs = []
    t0 = min((g.time_s for g in groups if g.time_s is not None), default=0.0)
    for g in groups:
        uids = [u for u in g.uids if u in phase_iv and _image_enhanced(phase_iv[u], rules)]
        if not uids:
            continue
        numbers = [h.series_number for h in g.series if h.series_uid in uids and h.series_number is not None]
        ranges = [h.instance_range for h in g.series if h.series_uid in uids and h.instance_range is not None]
        order = {"series number": min(numbers)} if numbers else {}
        if g.time_s is not None:
            order[TIME_KEY] = round(g.time_s - t0, 1)
        label = "series " + "/".join(str(n) for n in sorted(set(numbers))) if numbers else f"acquisition {g.index + 1}"
        acqs.append(Acquisition(str(g.index), _median([measured[u].aorta_hu for u in uids]),
                                _median([measured[u].liver_hu for u in uids]), order,
                                (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None, label))
    if not acqs:
        return {}, {}, set()
    params = RelationParams(**{k: float(cfg[k]) for k in RELATION_MARGINS})
    votes: dict[int, list[Vote]] = {}
    notes: dict[int, list[dict]] = {}
    contradicted = set()
    for key, rel in relate_phases(acqs, params).items():
        gi = int(key)
        if TIME_KEY in rel.order_against:
            contradicted.add(gi)
        if rel.phases and rel.phases != ENHANCED:
            rule = f"relation-{rel.phase}" if rel.phase else "relation-" + "-or-".join(sorted(rel.phases))
            votes[gi] = [Vote("relation", rule, "phase", rel.phases, float(cfg["weight"]), rel.values())]
        else:
            notes[gi] = [{"source": "relation", "rule": "relation-undecided", "values": rel.values()}]
    return votes, notes, contradicted


def _image_enhanced(votes: list[Vote], rules: RuleSet) -> bool:
    """The series' own images show contrast (image phase evidence alone)."""
    return decide(votes, PHASES, rules)[0] != "unenhanced" and set_belief(votes, PHASES, ENHANCED) >= 0.5


def _delay(h: SeriesHeader) -> float | None:
    if h.contrast_start_s is None or h.acquisition_s is None:
        return None
    d = h.acquisition_s - h.contrast_start_s
    if d < -43200:      # acquisition after midnight, bolus start before, no dates
        d += 86400
    return d


def _measurable(h: SeriesHeader, kind: str | None, rules: RuleSet) -> bool:
    if kind in ("ct", None):
        return h.modality == "CT"
    if kind == "dect_vmi":
        kev = h.kev if h.kev is not None else h.text_kev
        lo, hi = rules.image["vmi_kev_as_conventional"]
        return kev is not None and lo <= kev <= hi
    return False


def _image_votes(measured: dict[str, PhaseMeasurement], group_of: dict[str, _Group], rules: RuleSet) -> dict[str, list[Vote]]:
    """Image rule votes per measured series, in two passes: the first finds the unenhanced
    baseline and the enhanced acquisitions, the second adds gains and ranks."""
    base = {uid: _base_record(m) for uid, m in measured.items()}
    first = {uid: rule_votes(rules.image_rules, rec, "image") for uid, rec in base.items()}
    unenh = [uid for uid, vs in first.items() if decide(_axis(vs, "phase"), PHASES, rules)[0] == "unenhanced"]
    enh = [uid for uid, vs in first.items() if set_belief(_axis(vs, "phase"), PHASES, ENHANCED) >= 0.5]
    base_aorta = _median([measured[u].aorta_hu for u in unenh])
    base_liver = _median([measured[u].liver_hu for u in unenh])
    # Rank acquisitions (not series: reconstructions of one acquisition tie) by aorta HU.
    group_aorta: dict[int, float] = {}
    for uid in enh:
        gi = group_of[uid].index
        vals = [measured[u].aorta_hu for u in enh if group_of[u].index == gi and measured[u].aorta_hu is not None]
        if vals:
            group_aorta[gi] = statistics.median(vals)
    ranked = sorted(group_aorta, key=lambda gi: -group_aorta[gi])
    out = {}
    for uid, rec in base.items():
        rec = dict(rec)
        m = measured[uid]
        if base_aorta is not None and m.aorta_hu is not None and uid not in unenh:
            rec["aorta_gain"] = m.aorta_hu - base_aorta
            if base_liver is not None and m.liver_hu is not None:
                rec["liver_gain"] = m.liver_hu - base_liver
                if rec["aorta_gain"] > 20:
                    rec["liver_aorta_ratio"] = rec["liver_gain"] / rec["aorta_gain"]
        gi = group_of[uid].index
        sib = [measured[u].aorta_hu for u in group_of[uid].uids
               if u != uid and u in measured and measured[u].aorta_hu is not None]
        if sib:
            rec["sibling_aorta_max"] = max(sib)
        if gi in group_aorta:
            rec["n_enhanced"] = len(ranked)
            rec["aorta_rank_high"] = ranked.index(gi) + 1
            rec["aorta_rank_low"] = len(ranked) - ranked.index(gi)
        out[uid] = rule_votes(rules.image_rules, rec, "image")
    return out


def _base_record(m: PhaseMeasurement) -> dict[str, Any]:
    rec: dict[str, Any] = {"aorta_hu": m.aorta_hu, "liver_hu": m.liver_hu, "air_fraction": m.air_fraction,
                           "median_value": m.median_value, "p99_value": m.p99_value}
    if m.aorta_hu is not None and m.liver_hu is not None:
        rec["aorta_minus_liver"] = m.aorta_hu - m.liver_hu
    return rec


def _median(vals: Iterable[float | None]) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def _status(g: _Group, phase_hv: dict[str, list[Vote]], phase_iv: dict[str, list[Vote]], rules: RuleSet) -> str:
    """U / E / ? for one acquisition from its header and image phase evidence (not timing)."""
    votes = [v for h in g.series for v in phase_hv[h.series_uid] + phase_iv.get(h.series_uid, [])]
    label, _, _ = decide(votes, PHASES, rules)
    if label == "unenhanced":
        return "U"
    if set_belief(votes, PHASES, ENHANCED) >= 0.5:
        return "E"
    return "?"


def _scaled(v: Vote, source: str, factor: float, uid: str) -> Vote:
    return Vote(source, v.rule, v.axis, v.labels, v.weight * factor, v.values, uid)


def _cands(ranking: list[tuple[str, float]]) -> list[dict[str, Any]]:
    return [{"label": k, "belief": round(b, 3)} for k, b in ranking[:4]]


def _conflicts(votes: Sequence[Vote], labels: Sequence[str], axis: str) -> list[dict[str, Any]]:
    """Report when header, timing and image evidence disagree: a source's best label (belief
    >= 0.3) is another's, or another source commits >= 0.5 of its mass against it."""
    masses = {}
    for source in ("header", "timing", "image", "relation"):
        vs = [v for v in votes if v.source.split("-")[-1] == source]
        if vs:
            masses[source] = combine(vs, labels)
    tops = {}
    for source, m in masses.items():
        label, belief = max(((k, m.get(frozenset({k}), 0.0)) for k in labels), key=lambda kv: kv[1])
        if belief >= 0.3:
            tops[source] = label
    against = {src: [lab for other, lab in tops.items() if other != src
                     and sum(v for k, v in m.items() if lab not in k) >= 0.5]
               for src, m in masses.items()}
    if len(set(tops.values())) > 1 or any(against.values()):
        values = {"best_by_source": tops}
        contradicted = {src: labs for src, labs in against.items() if labs}
        if contradicted:
            values["contradicts"] = contradicted
        return [{"source": "decision", "rule": "evidence-conflict", "axis": axis, "values": values}]
    return []
