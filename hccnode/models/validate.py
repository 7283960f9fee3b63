"""Validate the node's model outputs against a site's observed outcomes.

`hccnode models validate --outcomes FILE.csv [--predictions FILE.csv] --out DIR` joins model
outputs (from the `model_results` table, or a predictions CSV) with outcomes by Study
Instance UID and writes, per card version: ROC AUC with a seeded bootstrap CI, a calibration
plot with slope and intercept (only where the card gives a probability), sensitivity and
specificity at the published cutoff, Kaplan-Meier curves by risk group with the log-rank p,
and Cox hazard ratios with CIs. Output: DIR/report.json, DIR/report.html and PNG plots.

Outcomes CSV (one row per study; UTF-8, header required):
  study_uid          Study Instance UID of the baseline study the model was run on
  best_response      CR, PR, SD or PD (each card maps these to its own outcome, e.g. SD+PD)
  response_criteria  optional: mRECIST, RECIST 1.1, iRECIST (compared with the card's)
  pfs_months, pfs_event   optional: progression-free survival time (months) and 1 = event, 0 = censored
  os_months, os_event     optional: overall survival time (months) and 1 = death, 0 = censored
Predictions CSV (instead of the database):
  study_uid, card_id, card_version, and at least one of:
  score (a logistic card's linear_predictor output; a cutoff card's input value),
  probability (where the card reports one), risk_group
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from hccnode import RESEARCH_USE
from hccnode.models.card import Card, RESPONSES

CRITERIA = {"mrecist": "mRECIST", "recist": "RECIST", "recist1.1": "RECIST 1.1", "recist 1.1": "RECIST 1.1",
            "irecist": "iRECIST"}


class ValidationInputError(ValueError):
    """An outcomes or predictions file that cannot be used; the message names file, line and column."""


# ------------------------------------------------------------------ reading


@dataclass
class Outcome:
    study_uid: str
    best_response: str | None = None
    criteria: str | None = None
    times: dict[str, tuple[float, int]] = field(default_factory=dict)  # endpoint -> (months, event)


@dataclass
class Prediction:
    study_uid: str
    card_id: str
    card_version: str
    score: float | None = None
    probability: float | None = None
    risk_group: str | None = None


def _rows(text: str, name: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValidationInputError(f"{name}: line 1: header lacks column(s) {', '.join(missing)}")
    unknown = [c for c in header if c not in allowed]
    if unknown:
        raise ValidationInputError(f"{name}: line 1: unknown column(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")
    reader.fieldnames = header
    out = []
    for row in reader:
        if None in row:
            raise ValidationInputError(f"{name}: line {reader.line_num}: more fields than the header")
        out.append((reader.line_num, {k: (v or "").strip() for k, v in row.items()}))
    return out


def _float(value: str, name: str, line: int, column: str, minimum: float | None = None) -> float | None:
    if value == "":
        return None
    try:
        x = float(value)
    except ValueError:
        raise ValidationInputError(f"{name}: line {line}: column {column}: not a number") from None
    if not math.isfinite(x) or (minimum is not None and x < minimum):
        raise ValidationInputError(f"{name}: line {line}: column {column}: must be a finite number >= {minimum}")
    return x


def parse_outcomes(text: str, name: str = "<outcomes>") -> dict[str, Outcome]:
    cols = ("study_uid", "best_response", "response_criteria", "pfs_months", "pfs_event", "os_months", "os_event")
    out: dict[str, Outcome] = {}
    for line, row in _rows(text, name, ("study_uid",), cols):
        uid = row["study_uid"]
        if not re.match(r"^[0-9]+(\.[0-9]+)*$", uid):
            raise ValidationInputError(f"{name}: line {line}: column study_uid: not a DICOM UID")
        if uid in out:
            raise ValidationInputError(f"{name}: line {line}: column study_uid: the same study appears twice")
        o = Outcome(uid)
        resp = row.get("best_response", "").upper()
        if resp:
            if resp not in RESPONSES:
                raise ValidationInputError(f"{name}: line {line}: column best_response: {resp!r} is not one of {', '.join(RESPONSES)}")
            o.best_response = resp
        crit = row.get("response_criteria", "")
        if crit:
            o.criteria = CRITERIA.get(crit.lower().replace("_", " "), crit)
        for ep in ("pfs", "os"):
            t = _float(row.get(f"{ep}_months", ""), name, line, f"{ep}_months", 0.0)
            e = row.get(f"{ep}_event", "")
            if (t is None) != (e == ""):
                raise ValidationInputError(f"{name}: line {line}: columns {ep}_months and {ep}_event must be given together")
            if t is not None:
                if e not in ("0", "1"):
                    raise ValidationInputError(f"{name}: line {line}: column {ep}_event: expected 1 (event) or 0 (censored)")
                o.times[ep] = (t, int(e))
        out[uid] = o
    return out


def parse_predictions(text: str, name: str = "<predictions>") -> list[Prediction]:
    cols = ("study_uid", "card_id", "card_version", "score", "probability", "risk_group")
    out = []
    for line, row in _rows(text, name, ("study_uid", "card_id", "card_version"), cols):
        p = Prediction(row["study_uid"], row["card_id"], row["card_version"],
                       _float(row.get("score", ""), name, line, "score"),
                       _float(row.get("probability", ""), name, line, "probability", 0.0),
                       row.get("risk_group") or None)
        if p.probability is not None and p.probability > 1:
            raise ValidationInputError(f"{name}: line {line}: column probability: must be between 0 and 1")
        if p.score is None and p.probability is None and p.risk_group is None:
            raise ValidationInputError(f"{name}: line {line}: needs a score, probability or risk_group")
        out.append(p)
    return out


def predictions_from_store(rows: Iterable[dict[str, Any]], cards: dict[str, Card]) -> list[Prediction]:
    """Turn `model_results` rows into predictions (the score of a cutoff card is its input value)."""
    out = []
    for r in rows:
        outputs = r["output"].get("outputs", {})
        card = cards.get(f"{r['card_id']}@{r['card_version']}")
        score = outputs.get("linear_predictor")
        if card is not None and card.form == "cutoff":
            v = r["inputs"].get(card.cutoff.input, {}).get("value")
            score = float(v) if v is not None else None
        out.append(Prediction(r["study_uid"], r["card_id"], r["card_version"], score,
                              outputs.get("probability"), outputs.get("risk_group")))
    return out


# ------------------------------------------------------------------ statistics (pure)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); equals sklearn's roc_auc_score."""
    y = np.asarray(y, bool)
    values, inverse, counts = np.unique(np.asarray(score, float), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average rank of tied scores
    n1, n0 = int(y.sum()), int((~y).sum())
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_auc(y: np.ndarray, score: np.ndarray, n_boot: int = 1000, seed: int = 0,
                  progress: bool = False) -> tuple[float, float, float]:
    """AUC with a percentile bootstrap 95% CI (stratified resampling keeps both classes)."""
    from tqdm import tqdm

    y = np.asarray(y, int)
    score = np.asarray(score, float)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    stats = []
    for _ in tqdm(range(n_boot), desc="bootstrap AUC", disable=not progress, leave=False):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        stats.append(auc(y[idx], score[idx]))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return auc(y, score), float(lo), float(hi)


def logistic_fit(y: np.ndarray, x: np.ndarray, offset: np.ndarray | None = None,
                 slope: bool = True, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Unpenalised logistic regression of y on [1, x] (or on 1 with `x` as an offset when
    slope=False) by Newton-Raphson; returns (coefficients, standard errors)."""
    y = np.asarray(y, float)
    x = np.asarray(x, float)
    off = np.zeros_like(y) if offset is None else np.asarray(offset, float)
    X = np.column_stack([np.ones_like(x), x]) if slope else np.ones((len(y), 1))
    beta = np.zeros(X.shape[1])
    for _ in range(max_iter):
        eta = off + X @ beta
        p = 1.0 / (1.0 + np.exp(-eta))
        w = np.clip(p * (1 - p), 1e-12, None)
        info = X.T @ (X * w[:, None])
        step = np.linalg.solve(info, X.T @ (y - p))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-10:
            break
    eta = off + X @ beta
    p = 1.0 / (1.0 + np.exp(-eta))
    info = X.T @ (X * np.clip(p * (1 - p), 1e-12, None)[:, None])
    se = np.sqrt(np.diag(np.linalg.inv(info)))
    return beta, se


def calibration(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Calibration slope (y ~ a + b logit p) and calibration-in-the-large (y ~ a + offset logit p)."""
    p = np.clip(np.asarray(prob, float), 1e-9, 1 - 1e-9)
    lp = np.log(p / (1 - p))
    (a, b), (sa, sb) = logistic_fit(y, lp)
    (citl,), (sc,) = logistic_fit(y, lp, offset=lp, slope=False)
    return {"slope": float(b), "slope_ci": [float(b - 1.96 * sb), float(b + 1.96 * sb)],
            "intercept": float(citl), "intercept_ci": [float(citl - 1.96 * sc), float(citl + 1.96 * sc)],
            "mean_predicted": float(p.mean()), "observed": float(np.mean(y))}


def confusion(y: np.ndarray, test_positive: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, bool)
    t = np.asarray(test_positive, bool)
    tp, fn, tn, fp = int(np.sum(y & t)), int(np.sum(y & ~t)), int(np.sum(~y & ~t)), int(np.sum(~y & t))
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    return {"tp": tp, "fn": fn, "tn": tn, "fp": fp, "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
            "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)}


def youden_cutoff(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """Threshold maximising sensitivity + specificity - 1 for 'score >= threshold'; (threshold, J)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, score)
    j = tpr - fpr
    i = int(np.argmax(j[1:]) + 1)  # thr[0] is +inf
    return float(thr[i]), float(j[i])


def survival_by_group(time: np.ndarray, event: np.ndarray, high: np.ndarray) -> dict[str, Any]:
    """Log-rank test and Cox HR (high vs low group) with 95% CI; medians per group."""
    import pandas as pd
    from lifelines import CoxPHFitter, KaplanMeierFitter
    from lifelines.statistics import logrank_test

    time, event, high = np.asarray(time, float), np.asarray(event, int), np.asarray(high, bool)
    lr = logrank_test(time[high], time[~high], event[high], event[~high])
    cph = CoxPHFitter()
    cph.fit(pd.DataFrame({"t": time, "e": event, "high": high.astype(float)}), "t", "e")
    s = cph.summary.loc["high"]
    medians = {}
    for label, mask in (("high", high), ("low", ~high)):
        km = KaplanMeierFitter().fit(time[mask], event[mask])
        m = km.median_survival_time_
        medians[label] = None if not np.isfinite(m) else float(m)
    return {"logrank_p": float(lr.p_value), "hr": float(s["exp(coef)"]),
            "hr_ci": [float(s["exp(coef) lower 95%"]), float(s["exp(coef) upper 95%"])],
            "median_months": medians, "n_high": int(high.sum()), "n_low": int((~high).sum()),
            "events": int(event.sum())}


def cox_continuous(time: np.ndarray, event: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    import pandas as pd
    from lifelines import CoxPHFitter

    cph = CoxPHFitter()
    cph.fit(pd.DataFrame({"t": time, "e": event, "score": score}), "t", "e")
    s = cph.summary.loc["score"]
    return {"hr_per_unit": float(s["exp(coef)"]), "hr_ci": [float(s["exp(coef) lower 95%"]), float(s["exp(coef) upper 95%"])],
            "p": float(s["p"])}


# ------------------------------------------------------------------ plots


def _figure(size: tuple[float, float] = (4.5, 4.5)):
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, dpi=100)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def plot_roc(y, score, path: Path, title: str) -> None:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score)
    fig, ax = _figure()
    ax.plot(fpr, tpr, lw=2)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    _save(fig, path)


def plot_calibration(y, prob, path: Path, title: str, bins: int = 10) -> None:
    prob, y = np.asarray(prob, float), np.asarray(y, float)
    edges = np.unique(np.quantile(prob, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, prob, side="right") - 1, 0, len(edges) - 2)
    xs = [prob[which == i].mean() for i in range(len(edges) - 1) if np.any(which == i)]
    ys = [y[which == i].mean() for i in range(len(edges) - 1) if np.any(which == i)]
    fig, ax = _figure()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.plot(xs, ys, "o-")
    ax.set(xlabel="predicted probability", ylabel="observed proportion", title=title, xlim=(0, 1), ylim=(0, 1))
    _save(fig, path)


def plot_km(time, event, high, labels: tuple[str, str], path: Path, title: str) -> None:
    from lifelines import KaplanMeierFitter

    time, event, high = np.asarray(time, float), np.asarray(event, int), np.asarray(high, bool)
    fig, ax = _figure((5.5, 4.2))
    for mask, label in ((high, labels[0]), (~high, labels[1])):
        KaplanMeierFitter().fit(time[mask], event[mask], label=f"{label} (n={int(mask.sum())})").plot_survival_function(ax=ax, ci_show=False)
    ax.set(xlabel="months", ylabel="survival probability", title=title, ylim=(0, 1.02))
    _save(fig, path)


# ------------------------------------------------------------------ report


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _high_group(card: Card) -> tuple[str, str] | None:
    if card.form == "cutoff":
        return card.cutoff.high_group, card.cutoff.low_group
    sc = card.logistic.score_cutoff
    return (sc.high_group, sc.low_group) if sc else None


def validate_card(card: Card, preds: list[Prediction], outcomes: dict[str, Outcome], out_dir: Path,
                  n_boot: int = 1000, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Validation of one card version on the joined data; writes its plots into out_dir."""
    res: dict[str, Any] = {"card_id": card.id, "card_version": card.version, "card_status": card.status,
                           "citation": card.citation, "title": card.title, "outcome": card.outcome["name"],
                           "limitations": card.limitations, "plots": {}, "notes": [],
                           "direction_conflict": card.outcome.get("direction_conflict")}
    joined = [(p, outcomes[p.study_uid]) for p in preds if p.study_uid in outcomes]
    res["n_predictions"], res["n_joined"] = len(preds), len(joined)
    stem = _safe(f"{card.id}_{card.version}")
    groups = _high_group(card)
    crit = {o.criteria for _, o in joined if o.criteria}
    if crit and card.outcome.get("criteria") and any(c != card.outcome["criteria"] for c in crit):
        res["notes"].append(f"site response criteria ({', '.join(sorted(crit))}) differ from the card's ({card.outcome['criteria']})")

    if card.outcome["kind"] == "binary":
        rows = [(p, o) for p, o in joined if o.best_response]
        y = np.array([o.best_response in card.outcome["positive_responses"] for _, o in rows], int)
        b: dict[str, Any] = {"n": len(rows), "events": int(y.sum()),
                             "positive": f"{card.outcome['positive_label']} ({'+'.join(card.outcome['positive_responses'])})"}
        scored = [(p.score if p.score is not None else p.probability) for p, _ in rows]
        ok = [s is not None for s in scored]
        if len(rows) and 0 < y[ok].sum() < sum(ok):
            s = np.array([v for v in scored if v is not None], float)
            yy = y[ok]
            a, lo, hi = bootstrap_auc(yy, s, n_boot, seed, progress)
            b["auc"], b["auc_ci"], b["auc_bootstrap"] = a, [lo, hi], {"n": n_boot, "seed": seed, "method": "percentile, stratified"}
            published = [p for p in card.performance if p["metric"] == "auc" and "cohort" not in p]
            if published:
                b["published_auc"] = published[0]
            plot = f"roc_{stem}.png"
            plot_roc(yy, s, out_dir / plot, f"{card.id} ROC (AUC {a:.3f})")
            res["plots"]["roc"] = plot
        else:
            res["notes"].append("AUC not computed: needs scores and both outcome classes")
        probs = [(p.probability, yv) for (p, _), yv in zip(rows, y) if p.probability is not None]
        if probs and 0 < sum(v for _, v in probs) < len(probs):
            pr, yp = np.array([v for v, _ in probs]), np.array([v for _, v in probs])
            b["calibration"] = calibration(yp, pr)
            plot = f"calibration_{stem}.png"
            plot_calibration(yp, pr, out_dir / plot, f"{card.id} calibration")
            res["plots"]["calibration"] = plot
        else:
            res["notes"].append("calibration not assessed: the card gives no probability"
                                + (f" ({card.logistic.probability_note})" if card.form == "logistic" and card.logistic.probability_note else ""))
        if groups:
            grouped = [(p.risk_group, yv) for (p, _), yv in zip(rows, y) if p.risk_group in groups]
            if grouped:
                t = np.array([g == groups[0] for g, _ in grouped])
                b["at_published_cutoff"] = confusion(np.array([v for _, v in grouped]), t)
                b["at_published_cutoff"]["test_positive"] = groups[0]
                b["at_published_cutoff"]["published"] = {p["metric"]: p["value"] for p in card.performance
                                                         if p["metric"] in ("sensitivity", "specificity") and "cohort" not in p}
        res["binary"] = b

    for ep, label in (("pfs", "PFS"), ("os", "OS")):
        rows = [(p, o.times[ep]) for p, o in joined if ep in o.times]
        if len(rows) < 2:
            continue
        t = np.array([v[0] for _, v in rows])
        e = np.array([v[1] for _, v in rows])
        s: dict[str, Any] = {"n": len(rows), "events": int(e.sum())}
        if groups and e.sum() > 0:
            g = [(p.risk_group, ti, ei) for (p, _), ti, ei in zip(rows, t, e) if p.risk_group in groups]
            high = np.array([x[0] == groups[0] for x in g])
            if 0 < high.sum() < len(high):
                tt, ee = np.array([x[1] for x in g]), np.array([x[2] for x in g])
                s["by_group"] = survival_by_group(tt, ee, high)
                s["by_group"]["high_group"], s["by_group"]["low_group"] = groups
                s["by_group"]["published_hr"] = [p for p in card.performance if p["metric"].startswith(f"hr_{ep}")]
                plot = f"km_{ep}_{stem}.png"
                plot_km(tt, ee, high, groups, out_dir / plot, f"{card.id} {label} by risk group")
                res["plots"][f"km_{ep}"] = plot
        scores = [(p.score, ti, ei) for (p, _), ti, ei in zip(rows, t, e) if p.score is not None]
        if len(scores) > 2 and e.sum() > 0 and len({x[0] for x in scores}) > 1:
            s["cox_score"] = cox_continuous(np.array([x[1] for x in scores]), np.array([x[2] for x in scores]),
                                            np.array([x[0] for x in scores]))
        res[label.lower()] = s
    return res


def run(cards: dict[str, Card], predictions: list[Prediction], outcomes: dict[str, Outcome], out_dir: str | Path,
        n_boot: int = 1000, seed: int = 0, progress: bool = False, source: str = "") -> dict[str, Any]:
    """Validate every card version that has predictions; write report.json, report.html and plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"research_use": RESEARCH_USE, "predictions_source": source, "n_outcomes": len(outcomes),
                              "cards": [], "skipped": []}
    by_card: dict[str, list[Prediction]] = {}
    for p in predictions:
        by_card.setdefault(f"{p.card_id}@{p.card_version}", []).append(p)
    for key in sorted(by_card):
        card = cards.get(key)
        if card is None:
            report["skipped"].append({"card": key, "reason": "no card with this id and version is loaded"})
            continue
        report["cards"].append(validate_card(card, by_card[key], outcomes, out, n_boot, seed, progress))
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=_json_default), encoding="utf-8")
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    return report


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    raise TypeError(type(x).__name__)


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return html.escape(str(x))


def _ci(ci: list | None) -> str:
    return f"({_num(ci[0])} to {_num(ci[1])})" if ci else ""


def render_html(report: dict[str, Any]) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>hccnode model validation</title>',
             "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #999;padding:2px 6px;text-align:left}.warn{color:#a00}</style></head><body>",
             "<h1>Model validation at this site</h1>",
             f'<p class="warn"><strong>{e(report["research_use"])}</strong></p>',
             f"<p>Predictions from: {e(report.get('predictions_source') or 'model_results table')}; "
             f"outcomes for {report['n_outcomes']} studies.</p>"]
    for s in report["skipped"]:
        parts.append(f"<p class=\"warn\">Skipped {e(s['card'])}: {e(s['reason'])}</p>")
    for c in report["cards"]:
        parts.append(f"<h2>{e(c['card_id'])} version {e(c['card_version'])} ({e(c['card_status'])})</h2>")
        parts.append(f"<p>{e(c['title'])}<br>Paper: {e(c['citation'])} Outcome: {e(c['outcome'])}. "
                     f"Predictions: {c['n_predictions']}, joined with outcomes: {c['n_joined']}.</p>")
        if c.get("direction_conflict"):  # an AUC below 0.5 may be the other reading of the paper
            parts.append(f"<p class=\"warn\">{e(c['direction_conflict'])}</p>")
        b = c.get("binary")
        if b:
            rows = [("n (events)", f"{b['n']} ({b['events']} {e(b['positive'])})")]
            if "auc" in b:
                pub = b.get("published_auc")
                rows.append(("ROC AUC (bootstrap 95% CI)", f"{_num(b['auc'])} {_ci(b['auc_ci'])}"
                             + (f"; paper: {_num(pub['value'])} {_ci(pub.get('ci'))}" if pub else "")))
            cal = b.get("calibration")
            if cal:
                rows.append(("calibration slope", f"{_num(cal['slope'])} {_ci(cal['slope_ci'])}"))
                rows.append(("calibration intercept (in the large)", f"{_num(cal['intercept'])} {_ci(cal['intercept_ci'])}"))
            cut = b.get("at_published_cutoff")
            if cut:
                pub = cut.get("published", {})
                rows.append((f"at the published cutoff ({e(cut['test_positive'])} = positive)",
                             f"sensitivity {_num(cut['sensitivity'])} (paper {_num(pub.get('sensitivity'))}), "
                             f"specificity {_num(cut['specificity'])} (paper {_num(pub.get('specificity'))}); "
                             f"TP {cut['tp']} FN {cut['fn']} TN {cut['tn']} FP {cut['fp']}"))
            parts.append("<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
        for ep in ("pfs", "os"):
            s = c.get(ep)
            if not s:
                continue
            rows = [("n (events)", f"{s['n']} ({s['events']})")]
            g = s.get("by_group")
            if g:
                rows.append(("log-rank p", _num(g["logrank_p"])))
                rows.append((f"Cox HR, {e(g['high_group'])} vs {e(g['low_group'])}", f"{_num(g['hr'])} {_ci(g['hr_ci'])}"))
                for p in g["published_hr"]:
                    rows.append((f"paper: {e(p['metric'])}" + (f" ({e(p['cohort'])})" if p.get("cohort") else ""),
                                 f"{_num(p['value'])} {_ci(p.get('ci'))}"))
                rows.append(("median months (high / low)", f"{_num(g['median_months']['high'])} / {_num(g['median_months']['low'])}"))
            cs = s.get("cox_score")
            if cs:
                rows.append(("Cox HR per unit of score", f"{_num(cs['hr_per_unit'])} {_ci(cs['hr_ci'])}"))
            parts.append(f"<h3>{ep.upper()}</h3><table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>")
        for kind, plot in sorted(c["plots"].items()):
            parts.append(f'<figure><img src="{e(plot)}" alt="{e(kind)} plot for {e(c["card_id"])}">'
                         f"<figcaption>{e(kind)}</figcaption></figure>")
        if c["notes"]:
            parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in c["notes"]) + "</ul>")
        if c["limitations"]:
            parts.append("<details><summary>What the paper does not publish or gets wrong</summary><ul>"
                         + "".join(f"<li>{e(x)}</li>" for x in c["limitations"]) + "</ul></details>")
    parts.append("</body></html>")
    return "\n".join(parts)
