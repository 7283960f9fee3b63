"""Self-check: each card reproduces the numbers its paper prints.

The expected numbers live in the card (`[[selfcheck]]`), quoted as printed (strings, so the
number of decimals, and so the rounding, is known) with the place in the paper. Kinds:

  coefficients   exp(beta) vs OR, beta +/- 1.96 SE vs the OR's CI, (beta/SE)^2 vs Wald, p from z,
                 OR vs the geometric mean of its CI, beta inside its interval; and the card's
                 beta/OR equals the printed one
  hazard_ratios  HR vs the geometric mean of its CI; the card's performance entry equals it
  two_by_two     counts derived from printed rates reproduce every printed rate, and (or not)
                 the cohort sizes the paper reports elsewhere
  constant       the observed proportion lies between the predictions at the two outcome groups'
                 reported centres (a model fitted with an intercept does this)
  evaluate       a stated patient's group / output
  order          of two stated patients, the one with the stated worse outcome scores higher

Each check states what it expects, including known inconsistencies (expect_consistent =
false), so a pass means "the card says exactly what the paper's numbers support".
Comparisons use interval arithmetic over the printed rounding.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from hccnode.models.card import Card, CardError
from hccnode.models import engine

Z95 = 1.959964


@dataclass(frozen=True)
class CheckResult:
    kind: str
    where: str
    ok: bool
    message: str


# --------------------------------------------------------------- printed numbers


def printed(text: str) -> tuple[float, float]:
    """A number as printed -> (value, half a unit in its last printed digit)."""
    try:
        d = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a printed number") from None
    exp = d.as_tuple().exponent
    return float(d), 0.5 * 10.0 ** exp


def _range(fn: Callable[..., float], *args: tuple[float, float]) -> tuple[float, float]:
    """Bounds of fn over the rounding box of its printed arguments (fn monotone in each)."""
    vals = []
    for corner in itertools.product(*[(v - h, v + h) for v, h in args]):
        try:
            vals.append(fn(*corner))
        except (ZeroDivisionError, ValueError, OverflowError):
            continue
    return min(vals), max(vals)


def _matches(derived: tuple[float, float], text: str) -> bool:
    """Does a derived interval overlap the printed value's rounding interval?"""
    v, h = printed(text)
    return derived[0] <= v + h + 1e-12 and derived[1] >= v - h - 1e-12


def _p_matches(derived: tuple[float, float], text: str) -> bool:
    t = text.strip()
    if t.startswith("<"):
        return derived[0] < printed(t[1:])[0]
    return _matches(derived, t)


def _two_sided_p(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


# --------------------------------------------------------------- the checks


def _term(card: Card, name: str):
    for t in card.logistic.terms:
        if t.input == name:
            return t
    return None


def _check_coefficients(card: Card, check: dict) -> tuple[bool, str]:
    problems, done = [], 0
    for row in check["rows"]:
        name = row["term"]
        b, se, orr = row.get("beta"), row.get("se"), row.get("or")
        # The card's model must equal the printed table.
        if name == "intercept":
            if card.logistic.intercept is None or not math.isclose(card.logistic.intercept, printed(b)[0]):
                problems.append(f"intercept: card {card.logistic.intercept} != printed {b}")
        else:
            t = _term(card, name)
            if b is not None and not math.isclose(t.beta, printed(b)[0], abs_tol=1e-12):
                problems.append(f"{name}: card beta {t.beta:g} != printed {b}")
            if b is None and orr is not None and not math.isclose(math.exp(t.beta), printed(orr)[0], rel_tol=1e-9):
                problems.append(f"{name}: card OR {math.exp(t.beta):g} != printed {orr}")
        pb = printed(b) if b is not None else None
        pse = printed(se) if se is not None else None
        if pb and orr is not None:
            done += 1
            if not _matches(_range(math.exp, pb), orr):
                problems.append(f"{name}: exp(beta) does not give OR {orr}")
        if pb and pse and "or_ci" in row:
            done += 2
            lo = _range(lambda b_, s_: math.exp(b_ - Z95 * s_), pb, pse)
            hi = _range(lambda b_, s_: math.exp(b_ + Z95 * s_), pb, pse)
            if not (_matches(lo, row["or_ci"][0]) and _matches(hi, row["or_ci"][1])):
                problems.append(f"{name}: beta +/- 1.96 SE does not give CI {row['or_ci']}")
        if pb and pse and "wald" in row:
            done += 1
            if not _matches(_range(lambda b_, s_: (b_ / s_) ** 2, pb, pse), row["wald"]):
                problems.append(f"{name}: (beta/SE)^2 does not give Wald {row['wald']}")
        if "p" in row:
            if "z" in row:
                p = _range(_two_sided_p, printed(row["z"]))
            elif pb and pse:
                p = _range(lambda b_, s_: _two_sided_p(b_ / s_), pb, pse)
            elif orr is not None and "or_ci" in row:
                lo_, hi_ = printed(row["or_ci"][0]), printed(row["or_ci"][1])
                p = _range(lambda o, l, h: _two_sided_p(math.log(o) / ((math.log(h) - math.log(l)) / (2 * Z95))),
                           printed(orr), lo_, hi_)
            else:
                p = None
            if p is not None:
                done += 1
                if not _p_matches(p, row["p"]):
                    problems.append(f"{name}: derived p {p[0]:.3g}-{p[1]:.3g} does not give P {row['p']}")
        if orr is not None and "or_ci" in row and not (pb and pse):
            done += 1
            gm = _range(lambda l, h: math.sqrt(l * h), printed(row["or_ci"][0]), printed(row["or_ci"][1]))
            if not _matches(gm, orr):
                problems.append(f"{name}: OR {orr} is not the geometric mean of its CI")
        if "beta_ci" in row and pb:
            done += 1
            lo_, hi_ = printed(row["beta_ci"][0])[0], printed(row["beta_ci"][1])[0]
            if not lo_ <= pb[0] <= hi_:
                problems.append(f"{name}: beta {b} outside its interval {row['beta_ci']}")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(check['rows'])} rows, {done} derived values reproduce the printed ones"


def _check_hazard_ratios(card: Card, check: dict) -> tuple[bool, str]:
    problems = []
    for row in check["rows"]:
        gm = _range(lambda l, h: math.sqrt(l * h), printed(row["ci"][0]), printed(row["ci"][1]))
        if not _matches(gm, row["hr"]):
            problems.append(f"{row['metric']}: HR {row['hr']} is not the geometric mean of {row['ci']}")
        entry = [p for p in card.performance if p["metric"] == row["metric"] and p.get("cohort", "") == row.get("cohort", "")]
        want = (printed(row["hr"])[0], [printed(v)[0] for v in row["ci"]])
        if not any(math.isclose(p["value"], want[0]) and p.get("ci") and all(map(math.isclose, p["ci"], want[1])) for p in entry):
            problems.append(f"{row['metric']}: the card's performance entry does not equal the printed HR {row['hr']} {row['ci']}")
    if problems:
        return False, "; ".join(problems)
    return True, f"{len(check['rows'])} hazard ratios match their CIs and the card"


METRICS = {
    "sensitivity": lambda tp, fn, tn, fp: tp / (tp + fn),
    "specificity": lambda tp, fn, tn, fp: tn / (tn + fp),
    "ppv": lambda tp, fn, tn, fp: tp / (tp + fp),
    "precision": lambda tp, fn, tn, fp: tp / (tp + fp),
    "npv": lambda tp, fn, tn, fp: tn / (tn + fn),
    "accuracy": lambda tp, fn, tn, fp: (tp + tn) / (tp + fn + tn + fp),
    "youden": lambda tp, fn, tn, fp: tp / (tp + fn) + tn / (tn + fp) - 1,
    "f1": lambda tp, fn, tn, fp: 2 * tp / (2 * tp + fp + fn),
}


def _check_two_by_two(card: Card, check: dict) -> tuple[bool, str]:
    c = check["counts"]
    tp, fn, tn, fp = c["tp"], c["fn"], c["tn"], c["fp"]
    problems, notes = [], []
    for m in check["metrics"]:
        value = METRICS[m["metric"]](tp, fn, tn, fp) * (100 if m.get("percent") else 1)
        v, h = printed(m["reported"])
        fits = abs(value - v) <= h + 1e-9
        if fits != m.get("consistent", True):
            problems.append(f"{m['metric']}: {value:.4g} from the counts vs printed {m['reported']} "
                            f"({'fits' if fits else 'does not fit'}, card expects {'fit' if m.get('consistent', True) else 'misfit'})")
        elif not fits:
            notes.append(f"{m['metric']} printed {m['reported']} vs {value:.4g} (known)")
    cohort = check.get("cohort", {})
    derived = {"positive": tp + fn, "negative": tn + fp, "test_positive": tp + fp}
    mism = [f"{k} {derived[k]} vs reported {v}" for k, v in cohort.items() if derived[k] != v]
    consistent = not mism
    if consistent != check["expect_cohort_consistent"]:
        problems.append("cohort sizes " + ("match" if consistent else "do not match: " + ", ".join(mism))
                        + f", card expects {'a match' if check['expect_cohort_consistent'] else 'a mismatch'}")
    elif mism:
        notes.append("known cohort mismatch: " + ", ".join(mism))
    if problems:
        return False, "; ".join(problems)
    msg = f"TP {tp} FN {fn} TN {tn} FP {fp} reproduce {sum(m.get('consistent', True) for m in check['metrics'])} printed rates"
    return True, msg + ("; " + "; ".join(notes) if notes else "")


def _group_values(card: Card, group: dict, scale: dict | None) -> dict[str, float]:
    values = {k: float(v) for k, v in group.items()}
    if scale:
        values[scale["input"]] *= scale["factor"]
    return values


def _check_constant(card: Card, check: dict) -> tuple[bool, str]:
    prev = check["observed_positive"] / check["observed_n"]
    parts, ok = [], True
    for scale in check["scales"]:
        p_pos = engine.expit(engine.linear_predictor(card, _group_values(card, check["positive_group"], scale)))
        p_neg = engine.expit(engine.linear_predictor(card, _group_values(card, check["negative_group"], scale)))
        consistent = p_neg < prev < p_pos
        ok &= consistent == check["expect_consistent"]
        parts.append(f"{scale['label']}: P = {p_pos:.3g} / {p_neg:.3g} at the positive / negative group centres "
                     f"vs observed {prev:.3f} -> {'consistent' if consistent else 'inconsistent'}")
    expect = "consistent" if check["expect_consistent"] else "inconsistent"
    return ok, "; ".join(parts) + f" (card expects {expect})"


def _check_evaluate(card: Card, check: dict) -> tuple[bool, str]:
    inputs = {k: engine.InputValue(v, card.inputs[k].unit, "selfcheck") for k, v in check["inputs"].items()}
    result = engine.evaluate(card, inputs)
    if result["status"] != engine.EVALUATED:
        return False, "not evaluated: " + "; ".join(result["reasons"])
    problems = []
    for key, want in check["expect"].items():
        got = result["outputs"].get(key)
        if isinstance(want, str) and key == "risk_group":
            if got != want:
                problems.append(f"{key}: got {got!r}, paper says {want!r}")
        elif got is None or not _matches((got, got), str(want)):
            problems.append(f"{key}: got {got!r}, paper says {want}")
    if problems:
        return False, "; ".join(problems)
    return True, ", ".join(f"{k} = {v}" for k, v in check["expect"].items()) + " as stated"


def _check_order(card: Card, check: dict) -> tuple[bool, str]:
    ignore = set(check.get("ignore", []))

    def partial(values: dict) -> float:
        terms = [t for t in card.logistic.terms if t.input not in ignore]
        x = engine.term_values(card, {**{t.input: 0.0 for t in card.logistic.terms}, **values})
        return sum(t.beta * x[t.input] for t in terms)

    hi, lo = partial(check["higher"]), partial(check["lower"])
    ok = hi > lo
    leaving = f" (leaving out {', '.join(sorted(ignore))})" if ignore else ""
    return ok, f"relative log-odds {hi:.3f} (stated worse outcome) vs {lo:.3f}{leaving}"


CHECKS: dict[str, Callable[[Card, dict], tuple[bool, str]]] = {
    "coefficients": _check_coefficients,
    "hazard_ratios": _check_hazard_ratios,
    "two_by_two": _check_two_by_two,
    "constant": _check_constant,
    "evaluate": _check_evaluate,
    "order": _check_order,
}


def run(card: Card) -> list[CheckResult]:
    """All of a card's self-checks; a check that crashes counts as failed, with the reason."""
    out = []
    for check in card.selfchecks:
        try:
            ok, msg = CHECKS[check["kind"]](card, check)
        except Exception as exc:  # a card's data must never crash the node
            ok, msg = False, f"check failed to run: {exc}"
        out.append(CheckResult(check["kind"], check["where"], ok, msg))
    return out


def _cited(card: Card) -> str:
    return card.reference.short() if card.reference is not None else card.citation


def summary_line(card: Card, results: list[CheckResult]) -> str:
    """One line per card: id@version, its paper (first author, year: never the stored text's file name), result."""
    if not results and card.status == "site-recalibrated":
        return (f"{card.key} ({_cited(card)}): site version of {card.derived_from}, fitted on "
                f"{card.recalibration.get('data_file', '?')} (n = {card.recalibration.get('n', '?')}); "
                f"the paper's worked numbers are checked on {card.derived_from}")
    if not results:
        return f"{card.key} ({_cited(card)}): NO SELF-CHECK - the card states no worked numbers"
    failed = [r for r in results if not r.ok]
    head = f"{card.key} ({_cited(card)}): "
    if failed:
        return head + f"FAIL {len(failed)}/{len(results)} - " + " | ".join(f"{r.kind} [{r.where}]: {r.message}" for r in failed)
    return head + f"ok {len(results)}/{len(results)} - " + " | ".join(f"{r.kind}: {r.message}" for r in results)


# --------------------------------------------------------------- structure


def _need(check: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in check:
        raise CardError(f"{where}.{key}: missing (required)")
    if not isinstance(check[key], kind):
        raise CardError(f"{where}.{key}: wrong type {type(check[key]).__name__}")
    return check[key]


def _need_printed(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise CardError(f"{where}: quote printed numbers as strings (\"0.010\") so their rounding is known")
    try:
        printed(value.lstrip("<"))
    except ValueError as exc:
        raise CardError(f"{where}: {exc}") from None


def validate(card: Card, path: str) -> None:
    """Check each self-check's fields against its kind; the error names the field."""
    for i, check in enumerate(card.selfchecks):
        w = f"{path}: selfcheck[{i}]"
        kind = check["kind"]
        if kind in ("coefficients", "constant", "order") and card.form != "logistic":
            raise CardError(f"{w}.kind: {kind!r} needs a logistic card")
        if kind == "coefficients":
            for j, row in enumerate(_need(check, "rows", list, w)):
                rw = f"{w}.rows[{j}]"
                term = _need(row, "term", str, rw)
                if term != "intercept" and _term(card, term) is None:
                    raise CardError(f"{rw}.term: {term!r} is not a term of the model")
                for key in ("beta", "se", "wald", "p", "or", "z"):
                    if key in row:
                        _need_printed(row[key], f"{rw}.{key}")
                for key in ("or_ci", "beta_ci"):
                    if key in row:
                        if not isinstance(row[key], list) or len(row[key]) != 2:
                            raise CardError(f"{rw}.{key}: expected [lower, upper]")
                        for k, v in enumerate(row[key]):
                            _need_printed(v, f"{rw}.{key}[{k}]")
        elif kind == "hazard_ratios":
            for j, row in enumerate(_need(check, "rows", list, w)):
                rw = f"{w}.rows[{j}]"
                _need(row, "metric", str, rw)
                _need_printed(_need(row, "hr", str, rw), f"{rw}.hr")
                ci = _need(row, "ci", list, rw)
                if len(ci) != 2:
                    raise CardError(f"{rw}.ci: expected [lower, upper]")
                for k, v in enumerate(ci):
                    _need_printed(v, f"{rw}.ci[{k}]")
        elif kind == "two_by_two":
            counts = _need(check, "counts", dict, w)
            for key in ("tp", "fn", "tn", "fp"):
                v = counts.get(key)
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise CardError(f"{w}.counts.{key}: expected a non-negative integer")
            _need(check, "expect_cohort_consistent", bool, w)
            for key in _need(check, "cohort", dict, w):
                if key not in ("positive", "negative", "test_positive"):
                    raise CardError(f"{w}.cohort.{key}: unknown (positive, negative, test_positive)")
            for j, m in enumerate(_need(check, "metrics", list, w)):
                if _need(m, "metric", str, f"{w}.metrics[{j}]") not in METRICS:
                    raise CardError(f"{w}.metrics[{j}].metric: {m['metric']!r} is not one of {', '.join(METRICS)}")
                _need_printed(_need(m, "reported", str, f"{w}.metrics[{j}]"), f"{w}.metrics[{j}].reported")
        elif kind == "constant":
            for key in ("observed_positive", "observed_n"):
                _need(check, key, int, w)
            _need(check, "expect_consistent", bool, w)
            for j, s in enumerate(_need(check, "scales", list, w)):
                if _need(s, "input", str, f"{w}.scales[{j}]") not in card.inputs:
                    raise CardError(f"{w}.scales[{j}].input: not an input of the card")
                _need(s, "factor", (int, float), f"{w}.scales[{j}]")
                _need(s, "label", str, f"{w}.scales[{j}]")
            for g in ("positive_group", "negative_group"):
                _values(card, _need(check, g, dict, w), f"{w}.{g}", complete=True)
            native = any(s["factor"] == 1 for s in check["scales"])
            if native and not check["expect_consistent"] and card.logistic.probability == "reported":
                raise CardError(f"{w}.expect_consistent: the constant fails in the card's own units, "
                                "so logistic.probability must be 'withheld'")
            if native and not check["expect_consistent"] and card.logistic.intercept_use != "left_out":
                raise CardError(f"{w}.expect_consistent: the constant fails in the card's own units, "
                                "so logistic.intercept_use must be 'left_out' (the terms are reported, not a sum "
                                "with that constant)")
        elif kind == "evaluate":
            _values(card, _need(check, "inputs", dict, w), f"{w}.inputs", complete=True)
            if not _need(check, "expect", dict, w):
                raise CardError(f"{w}.expect: empty")
        elif kind == "order":
            ignore = check.get("ignore", [])
            for g in ("higher", "lower"):
                got = _values(card, _need(check, g, dict, w), f"{w}.{g}", complete=False)
                missing = set(card.inputs) - set(got) - set(ignore)
                if missing:
                    raise CardError(f"{w}.{g}: missing {sorted(missing)[0]!r} (or list it in ignore)")


def _values(card: Card, values: dict, where: str, complete: bool) -> dict:
    for k, v in values.items():
        if k not in card.inputs:
            raise CardError(f"{where}.{k}: not an input of the card")
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise CardError(f"{where}.{k}: expected a number in {card.inputs[k].unit}")
    if complete:
        missing = set(card.inputs) - set(values)
        if missing:
            raise CardError(f"{where}: missing {sorted(missing)[0]!r}")
    return values
