"""One engine for every model card: check the inputs, compute the outputs, say what is withheld.

`evaluate(card, inputs)` is pure and deterministic. Each input arrives as value + unit +
source (where the caller got it: a marker id, a lab result, a clinical-input file row). The
engine never converts units: a unit other than the card's is refused with a reason naming
the input and the expected unit, because the papers' own unit slips (ECV as a fraction or
in %) are exactly what a silent conversion would hide.

Outputs, depending on the card:
  linear_predictor   sum(beta x) plus the intercept when published and not left out (flagged)
  terms              each term: input (label, value, unit), its cutoff, x, beta, the published
                     odds ratio, beta x and which way it pushes the modelled outcome (logistic
                     cards), so a reader can see what a score is made of; a constant the card
                     leaves out is named, not added
  direction_note     the card's [outcome] direction_conflict: where the direction the card infers
                     disagrees with the paper's own reading (paper 003), shown with every result
  probability        only when the card says the paper's constant can be stood behind
  derived_points     the node's own 0-100 rescaling of the terms (only where the card defines it);
                     never the paper's nomogram points
  risk_group         cutoff group, or score-cutoff group when its score is available
Anything not computed is listed in `withheld` with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from hccnode import RESEARCH_USE
from hccnode.models.card import OPS, UNITS, Card, Input, cohort_summary, normalize_unit

NOT_EVALUATED = "not_evaluated"
EVALUATED = "evaluated"


@dataclass(frozen=True)
class InputValue:
    """One model input as the caller has it."""

    value: Any
    unit: str
    source: str  # e.g. "marker tumor_ecv_iodine, SR 1.2.3", "lab CRP 2026-01-02T08:00 HL7", "clinical.csv row 4"


def as_input(raw: InputValue | Mapping[str, Any]) -> InputValue:
    if isinstance(raw, InputValue):
        return raw
    return InputValue(raw.get("value"), raw.get("unit", ""), raw.get("source", ""))


def expit(x: float) -> float:
    """Logistic function, stable for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _fmt(x: float) -> str:
    return f"{x:g}"


def check_input(spec: Input, raw: InputValue | Mapping[str, Any] | None) -> tuple[float | None, str | None]:
    """The value as the model uses it (float), or None and the reason it cannot be used."""
    if raw is None:
        unit = "a ratio or fraction (unit 1)" if spec.unit == "1" else spec.unit
        return None, f"input {spec.name!r} ({spec.label}) is missing; expected {unit} from {spec.source}"
    iv = as_input(raw)
    if iv.value is None or (isinstance(iv.value, str) and not iv.value.strip()):
        return None, f"input {spec.name!r} ({spec.label}) has no value"
    unit = normalize_unit(iv.unit)
    if unit != spec.unit:
        return None, (f"input {spec.name!r} ({spec.label}) has unit {iv.unit!r}; "
                      f"the card expects {spec.unit!r} ({UNITS[spec.unit]}) and does not convert")
    if spec.kind == "binary":
        v = iv.value
        if isinstance(v, str):
            v = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(v.strip().lower(), v)
        if isinstance(v, bool) or v in (0, 1):
            return float(bool(v)), None
        return None, f"input {spec.name!r} ({spec.label}) must be yes/no, got {iv.value!r}"
    if isinstance(iv.value, bool):
        return None, f"input {spec.name!r} ({spec.label}) must be a number in {spec.unit}, got yes/no"
    try:
        x = float(iv.value)
    except (TypeError, ValueError):
        return None, f"input {spec.name!r} ({spec.label}) is not a number: {iv.value!r}"
    if not math.isfinite(x):
        return None, f"input {spec.name!r} ({spec.label}) is not finite: {iv.value!r}"
    if spec.kind == "count" and x != int(x):
        return None, f"input {spec.name!r} ({spec.label}) must be a whole number, got {iv.value!r}"
    if (spec.min is not None and x < spec.min) or (spec.max is not None and x > spec.max):
        hint = ""
        if spec.unit == "1" and spec.max is not None and spec.max <= 1 and 1 < x <= 100:
            hint = " (this looks like a percentage; the card expects a fraction)"
        elif spec.unit == "%" and 0 < x < 1:
            hint = " (this looks like a fraction; the card expects a percentage)"
        return None, (f"input {spec.name!r} ({spec.label}) = {_fmt(x)} {spec.unit} is outside the card's "
                      f"range {_fmt(spec.min)} to {_fmt(spec.max)} {spec.unit}{hint}")
    return x, None


def _group(value: float, threshold: float, high_when: str) -> bool | None:
    """True for the high group, False for the low group, None when the paper leaves the tie open."""
    if high_when == "unstated":
        return None if value == threshold else value > threshold
    return OPS[high_when](float(value), float(threshold))


def term_values(card: Card, values: Mapping[str, float]) -> dict[str, float]:
    """x for each term: the input, or 0/1 for an indicator."""
    out = {}
    for t in card.logistic.terms:
        v = values[t.input]
        out[t.input] = float(OPS[t.indicator_op](float(v), t.indicator_threshold)) if t.indicator_op else v
    return out


def linear_predictor(card: Card, values: Mapping[str, float], include_intercept: bool = True) -> float:
    """sum(beta x) (+ intercept when published and asked for); `values` in the card's units."""
    x = term_values(card, values)
    lp = sum(t.beta * x[t.input] for t in card.logistic.terms)
    if include_intercept and card.logistic.intercept is not None:
        lp += card.logistic.intercept
    return lp


def pushes(contribution: float, outcome: str) -> str:
    """Which way one term moves the modelled log-odds of `outcome` (the card's positive label)."""
    if contribution > 0:
        return f"raises the modelled odds of {outcome}"
    if contribution < 0:
        return f"lowers the modelled odds of {outcome}"
    return "no effect (reference level)"


def terms(card: Card, values: Mapping[str, float]) -> list[dict[str, Any]]:
    """Each term of a logistic card: input (label, value, unit), x (the value or its 0/1 indicator),
    beta, the odds ratio the paper printed (when beta = ln OR), beta x, and which way it pushes."""
    x = term_values(card, values)
    outcome = card.outcome.get("positive_label") or card.outcome.get("name") or "the outcome"
    out = []
    for t in card.logistic.terms:
        spec = card.inputs[t.input]
        item = {"input": t.input, "label": spec.label, "value": float(values[t.input]), "unit": spec.unit,
                "x": x[t.input], "beta": t.beta, "contribution": t.beta * x[t.input] + 0.0}
        if t.from_odds_ratio:
            item["odds_ratio"] = math.exp(t.beta)
        if t.indicator_op:
            item["indicator"] = f"{t.input} {t.indicator_op} {t.indicator_threshold:g}"
            item["cutoff"] = f"{t.indicator_op} {t.indicator_threshold:g}"
        item["pushes"] = pushes(item["contribution"], outcome)
        if t.indicator_op and not x[t.input]:
            item["pushes"] = f"no effect (below the cutoff); at or above the cutoff it {pushes(t.beta, outcome)}"
        out.append(item)
    return out


def term_line(t: dict[str, Any]) -> str:
    """One term for a reader: label = value unit, cutoff, published OR, which way it pushes."""
    unit = "" if t["unit"] == "1" else f" {t['unit']}"
    text = f"{t['label']} = {t['value']:.4g}{unit}"
    if "cutoff" in t:
        text += f"; cutoff {t['cutoff']}{unit}: {'met' if t['x'] else 'not met'}"
    text += f"; published OR {t['odds_ratio']:.4g}" if "odds_ratio" in t else f"; coefficient {t['beta']:+.4g}"
    return text + f"; log-odds term {t['contribution']:+.3f}: {t['pushes']}"


def describe_terms(card: Card, values: Mapping[str, float]) -> str:
    """The terms as one line: 'beta x label (value) = contribution; ...'."""
    parts = []
    for t in terms(card, values):
        label = card.inputs[t["input"]].label
        what = f"[{t['indicator']}] = {t['x']:g}" if "indicator" in t else f"{t['x']:g}"
        parts.append(f"{t['beta']:+.4g} x {label} ({what}) = {t['contribution']:+.4g}")
    return "; ".join(parts)


def points(card: Card, values: Mapping[str, float]) -> float:
    """The node's derived points (not a paper's nomogram axis) on the 'max-abs-100' convention: each bounded term contributes
    100 |beta| / max|beta| at its higher-risk level and 0 at its lower-risk level."""
    x = term_values(card, values)
    scale = 100.0 / max(abs(t.beta) for t in card.logistic.terms)
    return sum(scale * (t.beta * x[t.input] - min(0.0, t.beta)) for t in card.logistic.terms)


def evaluate(card: Card, inputs: Mapping[str, InputValue | Mapping[str, Any]]) -> dict[str, Any]:
    """Evaluate `card` on `inputs` (name -> value + unit + source). Never raises on bad input:
    a model that cannot be evaluated comes back with status 'not_evaluated' and its reasons."""
    reasons: list[str] = []
    values: dict[str, float] = {}
    used: dict[str, dict[str, Any]] = {}
    for name, spec in card.inputs.items():
        raw = inputs.get(name)
        x, reason = check_input(spec, raw)
        if reason:
            reasons.append(reason)
            continue
        iv = as_input(raw)
        values[name] = x
        used[name] = {"value": iv.value, "unit": spec.unit, "source": iv.source}
    result: dict[str, Any] = {
        "card_id": card.id,
        "card_version": card.version,
        "card_status": card.status,
        "title": card.title,
        "paper": card.paper,          # the stored text's file: for the node's own bookkeeping, never shown
        "citation": card.citation,    # what outputs show: authors, title, journal, year (DOI when given)
        "where": card.where,
        "form": card.form,
        "outcome": {k: card.outcome.get(k) for k in ("name", "definition", "direction", "positive_label")},
        "cohort": {k: card.cohort.get(k) for k in ("n", "n_positive", "unit_of_analysis", "country", "therapy", "modality")},
        "cohort_facts": cohort_summary(card),
        "inputs_used": used,
        "input_labels": {name: spec.label for name, spec in card.inputs.items()},   # for people (summary page)
        "limitations": card.limitations,
        "research_use": RESEARCH_USE,
    }
    if card.derived_from:
        result["derived_from"] = card.derived_from
    if reasons:
        result.update(status=NOT_EVALUATED, reasons=reasons, outputs={}, withheld={})
        return result
    outputs, withheld = (_logistic(card, values) if card.form == "logistic" else _cutoff(card, values))
    result.update(status=EVALUATED, reasons=[], outputs=outputs, withheld=withheld)
    return result


def _logistic(card: Card, values: Mapping[str, float]) -> tuple[dict, dict]:
    m = card.logistic
    outputs: dict[str, Any] = {}
    withheld: dict[str, str] = {}
    lp = linear_predictor(card, values, include_intercept=m.score_intercept is not None)
    outputs["linear_predictor"] = lp
    outputs["linear_predictor_includes_intercept"] = m.score_intercept is not None
    outputs["terms"] = terms(card, values)
    if m.intercept is None:
        outputs["linear_predictor_note"] = "intercept unpublished: relative log-odds; only differences between patients carry meaning"
    elif m.score_intercept is None:
        outputs["linear_predictor_note"] = (
            f"sum of the terms without the published constant ({m.intercept:g}), which is left out: "
            f"{m.intercept_note} Relative log-odds; only differences between patients carry meaning. "
            f"Terms: {describe_terms(card, values)}")
    if m.probability == "reported":
        outputs["probability"] = expit(lp)
    else:
        withheld["probability"] = m.probability_note
    if card.outcome.get("direction_conflict"):
        outputs["direction_note"] = card.outcome["direction_conflict"]
    if m.points_convention:
        outputs["derived_points"] = points(card, values)
        outputs["derived_points_note"] = m.points_note
    elif m.score_cutoff and m.score_cutoff.on == "points":
        withheld["points"] = "the paper's points scale is unpublished"
    sc = m.score_cutoff
    if sc is not None:
        score = outputs.get(sc.on)
        if score is None:
            withheld["risk_group"] = (f"the {sc.threshold:g} cutoff is on the {sc.on}, which cannot be computed "
                                      f"from what the paper publishes ({sc.where})")
        else:
            high = _group(score, sc.threshold, sc.high_when)
            if high is None:
                withheld["risk_group"] = f"score equals the cutoff {sc.threshold:g}; the paper does not say which group includes it"
            else:
                outputs["risk_group"] = sc.high_group if high else sc.low_group
    return outputs, withheld


def _cutoff(card: Card, values: Mapping[str, float]) -> tuple[dict, dict]:
    c = card.cutoff
    v = values[c.input]
    high = _group(v, c.threshold, c.high_when)
    if high is None:
        return {}, {"risk_group": f"{c.input} equals the cutoff {c.threshold:g}; the paper does not say which group includes it"}
    group = c.high_group if high else c.low_group
    outputs: dict[str, Any] = {
        "risk_group": group,
        "risk_group_means": c.high_means if high else c.low_means,
        "cutoff": {"input": c.input, "threshold": c.threshold, "unit": card.inputs[c.input].unit,
                   "high_when": c.high_when, "high_group": c.high_group, "low_group": c.low_group},
    }
    if c.reference_group:
        outputs["reported_versus"] = (f"hazard ratios are for {c.high_group if c.reference_group == c.low_group else c.low_group} "
                                      f"against {c.reference_group} (reference)")
    outputs["reported"] = [dict(p) for p in card.performance]
    return outputs, {}


def evaluate_all(cards: Mapping[str, Card], inputs: Mapping[str, InputValue | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every card on the same inputs, published cards first; cards that disagree are all shown."""
    ordered = sorted(cards.values(), key=lambda c: (c.status != "published", c.id, c.version))
    return [evaluate(c, inputs) for c in ordered]
