"""Contrast phases of a study's enhanced CT acquisitions from how they relate to each other.

For headers that say nothing (no description, no contrast tags, no bolus time): the images of
one patient, one injection, still order themselves. `relate_phases()` is pure: it takes per
enhanced acquisition its aorta and liver attenuation (HU; the liver may be missing) and its
ordering keys (acquisition time, series number, instance numbers, whichever are present) and
returns per acquisition the phases that remain possible, with the evidence.

Physiology used (thresholds in hccnode/data/phase_rules.toml, [relations], with sources):
  arterial       the aorta near its first-pass peak while the liver, fed ~75 % by the portal vein,
                 is little enhanced: the aorta-liver gap is the largest of the study and the liver
                 is clearly less enhanced than in any later acquisition.
  portal venous  the liver at (or near) its peak, the aorta already falling from its peak.
  equilibrium    aorta and liver approach each other: the aorta lower than in the portal venous
                 phase, the gap smaller, the liver no higher than at its portal venous peak.

Method. Every assignment of distinct enhanced phases to the acquisitions (a liver protocol does
not repeat a phase) is tested against pairwise relations. For two acquisitions labelled X before Y:
  X arterial:        liver rise Ly - Lx and gap drop (Ax - Lx) - (Ay - Ly); without a liver in
                     either: aorta drop Ax - Ay (a larger margin: the aorta alone is weaker).
  X portal venous,   aorta drop Ax - Ay, gap drop, and the liver must not rise by the peak
  Y equilibrium:     tolerance (Ly - Lx) after its portal venous peak.
A relation reversed by at least its margin contradicts the assignment; one within its margin says
nothing. Every present ordering key must put X before Y. An acquisition gets a phase when every
assignment that nothing contradicts gives it the same one; otherwise it is ambiguous and the result
says why (which relation or which ordering key ruled out what, or that several fit).

With fewer enhanced acquisitions than enhanced phases the relations can show the arterial one
(liver far less enhanced than in the other) but not which post-arterial phases were acquired: a
falling aorta over a flat liver follows any two post-arterial times (portal venous and 3 min, or
3 and 5 min), so such an acquisition is left "portal venous or equilibrium". More enhanced
acquisitions than phases (repeated phases, or reconstructions without acquisition times to group
them) are not related at all.

Limits. The relations assume a liver protocol's timing: an arterial scan near the aortic peak (the
papers' 25-35 s, late arterial) and each enhanced phase acquired once. Where the liver was not found
in a series, its arterial relation rests on the aorta alone; an early arterial scan whose aorta is
still 50 HU or more below the portal venous one would then be misread (with the liver measured, the
liver relations hold it). A dual arterial protocol finds no fitting assignment and stays ambiguous.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

ENHANCED_ORDER = ("arterial", "portal_venous", "equilibrium")
POST_ARTERIAL = frozenset({"portal_venous", "equilibrium"})


@dataclass(frozen=True)
class Acquisition:
    """One enhanced acquisition as measured: HU values (None when not found) and ordering keys."""

    key: str
    aorta_hu: float | None
    liver_hu: float | None = None
    order: Mapping[str, float] = field(default_factory=dict)   # e.g. {"acquisition time": s, "series number": n}
    instance_range: tuple[int, int] | None = None              # smallest and largest instance number
    label: str = ""                                            # how the reasons name it (e.g. "series 4")

    @property
    def name(self) -> str:
        return self.label or self.key


@dataclass(frozen=True)
class RelationParams:
    """Margins in HU (see the [relations] section of the rules file for their sources)."""

    liver_rise_min: float
    gap_drop_min: float
    aorta_drop_min: float
    arterial_aorta_drop_min: float
    liver_peak_tolerance: float


@dataclass
class Relation:
    """What the study's relations say about one acquisition."""

    key: str
    phases: frozenset[str]            # one: decided; several: only these fit; empty: not related
    why: str
    evidence: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    order_against: frozenset[str] = frozenset()   # ordering keys that contradict every order the images allow

    @property
    def phase(self) -> str | None:
        return next(iter(self.phases)) if len(self.phases) == 1 else None

    def values(self) -> dict[str, Any]:
        v: dict[str, Any] = {"fits": sorted(self.phases, key=ENHANCED_ORDER.index), "why": self.why}
        if self.evidence:
            v["evidence"] = self.evidence
        if self.notes:
            v["notes"] = self.notes
        return v


def pair_relations(x: Acquisition, y: Acquisition, x_phase: str, p: RelationParams) -> list[dict[str, Any]]:
    """The relations between `x` labelled `x_phase` and the later-labelled `y`, each with its value
    and verdict: +1 agrees, -1 contradicts (reversed by at least the margin), 0 says nothing."""
    out: list[dict[str, Any]] = []

    def rel(name: str, value: float, margin: float, can_support: bool = True) -> None:
        verdict = 1 if value >= margin and can_support else -1 if value <= -margin else 0
        out.append({"relation": name, "value": round(value, 1), "margin": margin, "verdict": verdict})

    livers = x.liver_hu is not None and y.liver_hu is not None
    gap_drop = (x.aorta_hu - x.liver_hu) - (y.aorta_hu - y.liver_hu) if livers else None
    if x_phase == "arterial":
        if livers:
            rel("liver rise after arterial", y.liver_hu - x.liver_hu, p.liver_rise_min)
            rel("aorta-liver gap drop after arterial", gap_drop, p.gap_drop_min)
        else:
            rel("aorta drop after arterial (no liver)", x.aorta_hu - y.aorta_hu, p.arterial_aorta_drop_min)
    else:
        rel("aorta drop portal venous to equilibrium", x.aorta_hu - y.aorta_hu, p.aorta_drop_min)
        if livers:
            rel("aorta-liver gap drop portal venous to equilibrium", gap_drop, p.gap_drop_min)
            # the liver peaks in the portal venous phase: a clear rise afterwards contradicts
            rel("liver fall after its portal venous peak", x.liver_hu - y.liver_hu, p.liver_peak_tolerance,
                can_support=False)
    return out


def relate_phases(acquisitions: Sequence[Acquisition], params: RelationParams) -> dict[str, Relation]:
    """Phase(s) of each enhanced acquisition that the study's relations allow (see the module doc)."""
    if len({a.name for a in acquisitions}) < len(acquisitions):
        acquisitions = [replace(a, label="") for a in acquisitions]   # reasons then name them by key
    usable = [a for a in acquisitions if a.aorta_hu is not None]
    out = {a.key: Relation(a.key, frozenset(), "aorta not measured in this acquisition: no relation")
           for a in acquisitions if a.aorta_hu is None}
    n = len(usable)
    if n < 2:
        for a in usable:
            out[a.key] = Relation(a.key, frozenset(), "only one enhanced acquisition measured: nothing to relate it to")
        return out
    if n > len(ENHANCED_ORDER):
        why = (f"{n} enhanced acquisitions, more than the {len(ENHANCED_ORDER)} enhanced phases: repeated phases "
               "or reconstructions not grouped by acquisition time cannot be told apart by relation")
        for a in usable:
            out[a.key] = Relation(a.key, frozenset(), why)
        return out

    keys = _order_keys(usable)
    notes = [f"liver not measured in {a.name}: its relations use the aorta only" for a in usable if a.liver_hu is None]
    by_enhancement: list[tuple[tuple[str, ...], list[dict]]] = []   # assignments nothing in the images contradicts
    ruled_out: list[str] = []
    for labels in itertools.permutations(ENHANCED_ORDER, n):
        evidence, against = _assignment(usable, labels, params)
        if against:
            ruled_out.append(f"{_describe(usable, labels)}: {against}")
        else:
            by_enhancement.append((labels, evidence))
    fits: list[tuple[tuple[str, ...], list[dict]]] = []
    order_against: list[str] = []
    clashing: set[str] = set()
    for labels, evidence in by_enhancement:
        key, clash = _order_clash(usable, labels, keys)
        if clash:
            order_against.append(f"{_describe(usable, labels)}: {clash}")
            clashing.add(key)
        else:
            fits.append((labels, evidence))

    if not fits:
        if not by_enhancement:
            why = "no assignment of phases fits the enhancement: " + "; ".join(ruled_out)
        else:
            why = ("the acquisition order disagrees with the enhancement: " + "; ".join(order_against))
        for a in usable:
            out[a.key] = Relation(a.key, frozenset(), why, notes=notes, order_against=frozenset(clashing))
        return out

    used_keys = sorted(keys)
    for i, a in enumerate(usable):
        phases = frozenset(itertools.chain.from_iterable(_unsupported(labels, evidence, usable, i)
                                                         for labels, evidence in fits))
        if n < len(ENHANCED_ORDER) and phases <= POST_ARTERIAL:
            phases = POST_ARTERIAL
        evidence = _evidence_for(a, usable, fits) if len(phases) == 1 else []
        if len(phases) == 1:
            why = ("the only phase left by the enhancement relations"
                   + (f" and the order by {', '.join(used_keys)}" if used_keys else " (no ordering key present)"))
        elif phases == POST_ARTERIAL and n < len(ENHANCED_ORDER):
            why = (f"{n} enhanced acquisitions, this one not arterial: which post-arterial phase it is cannot be "
                   "told from the relations")
        elif len(fits) == 1:
            why = ("the images do not set it apart from the " + " or ".join(sorted(phases - {fits[0][0][i]}))
                   + " acquisition" + (f" (only {', '.join(used_keys)} order them)" if used_keys else ""))
        else:
            why = "several assignments fit: " + "; ".join(_describe(usable, labels) for labels, _ in fits)
        out[a.key] = Relation(a.key, phases, why, evidence, notes)
    return out


def _assignment(acqs: Sequence[Acquisition], labels: tuple[str, ...], p: RelationParams) -> tuple[list[dict], str]:
    """(relations of every pair under this assignment, text of the first contradiction or "")."""
    evidence = []
    for i, j in itertools.permutations(range(len(acqs)), 2):
        if ENHANCED_ORDER.index(labels[i]) > ENHANCED_ORDER.index(labels[j]):
            continue
        for r in pair_relations(acqs[i], acqs[j], labels[i], p):
            r = {"earlier": acqs[i].name, "later": acqs[j].name, **r}
            evidence.append(r)
            if r["verdict"] < 0:
                return evidence, (f"{r['relation']} from {acqs[i].name} to {acqs[j].name} is {r['value']} HU "
                                  f"(margin {r['margin']})")
    return evidence, ""


def _unsupported(labels: tuple[str, ...], evidence: list[dict], acqs: Sequence[Acquisition], i: int) -> set[str]:
    """Phase of acquisition i under `labels`, plus the phase of each neighbour (next earlier or later
    labelled acquisition) from which no image relation sets it apart: an order that only the
    ordering keys give is not taken (the images must agree, not merely not object)."""
    ranked = sorted(range(len(acqs)), key=lambda k: ENHANCED_ORDER.index(labels[k]))
    pos = ranked.index(i)
    out = {labels[i]}
    for k in (ranked[pos - 1] if pos > 0 else None, ranked[pos + 1] if pos + 1 < len(ranked) else None):
        if k is None:
            continue
        early, late = (k, i) if ENHANCED_ORDER.index(labels[k]) < ENHANCED_ORDER.index(labels[i]) else (i, k)
        if not any(r["verdict"] > 0 and r["earlier"] == acqs[early].name and r["later"] == acqs[late].name
                   for r in evidence):
            out.add(labels[k])
    return out


def _order_keys(acqs: Sequence[Acquisition]) -> dict[str, dict[str, float]]:
    """Ordering keys present in at least two acquisitions, by name: {key: {acquisition key: value}}.
    Instance numbers order acquisitions only when each series' range lies apart from the others'
    (numbering continued across the examination); restarting at 1 says nothing."""
    keys: dict[str, dict[str, float]] = {}
    for a in acqs:
        for k, v in a.order.items():
            if v is not None:
                keys.setdefault(k, {})[a.key] = float(v)
    ranges = [(a.key, a.instance_range) for a in acqs if a.instance_range is not None]
    spans = sorted(r for _, r in ranges)
    if len(ranges) >= 2 and all(a[1] < b[0] for a, b in zip(spans, spans[1:])):
        keys["instance numbers"] = {k: float(r[0]) for k, r in ranges}
    return {k: v for k, v in keys.items() if len(v) >= 2}


def _order_clash(acqs: Sequence[Acquisition], labels: tuple[str, ...], keys: dict[str, dict[str, float]]) -> tuple[str, str]:
    """(name of the first ordering key that contradicts `labels`, how) or ("", "")."""
    for name, values in keys.items():
        for i, j in itertools.permutations(range(len(acqs)), 2):
            if ENHANCED_ORDER.index(labels[i]) < ENHANCED_ORDER.index(labels[j]):
                vi, vj = values.get(acqs[i].key), values.get(acqs[j].key)
                if vi is not None and vj is not None and vi > vj:
                    return name, f"{name} put {acqs[j].name} ({vj:g}) before {acqs[i].name} ({vi:g})"
    return "", ""


def _describe(acqs: Sequence[Acquisition], labels: tuple[str, ...]) -> str:
    pairs = sorted(zip(labels, acqs), key=lambda la: ENHANCED_ORDER.index(la[0]))
    return ", ".join(f"{a.name} {lab}" for lab, a in pairs)


def _evidence_for(a: Acquisition, acqs: Sequence[Acquisition], fits: list[tuple[tuple[str, ...], list[dict]]]) -> list[dict]:
    """The relations involving `a` that agree (+1) in the fitting assignment(s), once each."""
    seen, out = set(), []
    for _, evidence in fits:
        for r in evidence:
            if r["verdict"] > 0 and a.name in (r["earlier"], r["later"]):
                k = (r["earlier"], r["later"], r["relation"])
                if k not in seen:
                    seen.add(k)
                    out.append({k2: v for k2, v in r.items() if k2 != "verdict"})
    return out
