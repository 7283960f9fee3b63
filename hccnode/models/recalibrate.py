"""Site recalibration: a new card version fitted on the site's own outcomes.

Two methods:
  logistic  fit y ~ a + b * LP on the site (LP = the card's linear predictor, without the
            intercept when the paper did not publish one). The new card keeps the model's
            form with beta' = b * beta and intercept' = a + b * intercept, so it gives a
            site-calibrated probability. Published score cutoffs are dropped: they belong
            to the paper's probability or points scale.
  cutoff    Youden-optimal threshold on the card's score (cutoff card: its input; logistic
            card: its linear predictor), 'score >= threshold' = high group.

The original card is never changed. The new card is a new file with a new version
('<version>+site.<YYYYMMDD>'), status 'site-recalibrated', `derived_from` the original, and a
[recalibration] table recording the method, the data file's SHA-256, n, events, the date
and the fitted values, so every result names which version (and which data) produced it.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from hccnode.models.card import Card, CardError, parse_card
from hccnode.models.validate import Outcome, Prediction, logistic_fit, youden_cutoff


class RecalibrationError(ValueError):
    """Recalibration cannot be done on these data; the message says why."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def binary_data(card: Card, preds: list[Prediction], outcomes: dict[str, Outcome]) -> tuple[np.ndarray, np.ndarray]:
    """(y, score) for the card's outcome on the studies with both a score and a response."""
    if card.outcome["kind"] != "binary":
        raise RecalibrationError(f"{card.key} predicts survival; recalibration here needs a binary response outcome")
    y, s = [], []
    for p in preds:
        o = outcomes.get(p.study_uid)
        if p.card_id != card.id or p.card_version != card.version or o is None or not o.best_response or p.score is None:
            continue
        y.append(int(o.best_response in card.outcome["positive_responses"]))
        s.append(p.score)
    y_arr, s_arr = np.array(y, int), np.array(s, float)
    if len(y_arr) < 10 or y_arr.sum() < 5 or (len(y_arr) - y_arr.sum()) < 5:
        raise RecalibrationError(f"{card.key}: too few joined studies with both outcomes "
                                 f"(n = {len(y_arr)}, events = {int(y_arr.sum())}; need n >= 10 and >= 5 of each class)")
    return y_arr, s_arr


def _version(card: Card, date: dt.date) -> str:
    return f"{card.version.split('+')[0]}+site.{date:%Y%m%d}"


def recalibrated_card(card: Card, method: str, y: np.ndarray, score: np.ndarray, data_file: str,
                      data_sha256: str, date: dt.date) -> dict[str, Any]:
    """The new card as a TOML-ready dict (pure: no file access)."""
    if card.status != "published":
        raise RecalibrationError(f"{card.key} is already a site version; recalibrate the published card {card.derived_from}")
    new = copy.deepcopy(card.raw)
    new.update(version=_version(card, date), status="site-recalibrated", derived_from=card.key)
    new.pop("selfcheck", None)  # the paper's worked numbers apply to the published card, not to this one
    rec: dict[str, Any] = {"method": method, "data_file": Path(data_file).name, "data_sha256": data_sha256,
                           "n": int(len(y)), "events": int(y.sum()), "date": date.isoformat(),
                           "original_card": card.key}
    if method == "logistic":
        if card.form != "logistic":
            raise RecalibrationError(f"{card.key} is a cutoff card; use --method cutoff")
        (a, b), (sa, sb) = logistic_fit(y, score)
        if not (math.isfinite(a) and math.isfinite(b)):
            raise RecalibrationError(f"{card.key}: the logistic fit did not converge (separated data?)")
        old = card.logistic.score_intercept or 0.0   # the constant inside the LP the fit was on
        lg = new["logistic"]
        lg["intercept"] = float(a + b * old)
        lg["probability"] = "reported"
        lg.pop("probability_note", None)
        lg.pop("intercept_use", None)        # the fitted intercept replaces a constant left out
        lg.pop("intercept_note", None)
        lg.pop("score_cutoff", None)
        for raw_term, term in zip(lg["terms"], card.logistic.terms):
            raw_term.pop("odds_ratio", None)
            raw_term["beta"] = float(b * term.beta)
        rec.update(fitted_intercept=float(a), fitted_intercept_se=float(sa), fitted_slope=float(b),
                   fitted_slope_se=float(sb),
                   note=("y ~ a + b * LP, LP without the published intercept (unpublished or left out)"
                         if card.logistic.score_intercept is None
                         else "y ~ a + b * LP, LP with the published intercept")
                   + "; published score cutoffs removed (they belong to the paper's scale)")
    elif method == "cutoff":
        thr, j = youden_cutoff(y, score)
        rec.update(youden_j=j, threshold=thr)
        if card.form == "cutoff":
            name = card.cutoff.input
            new["cutoff"].update(threshold=thr, high_when=">=",
                                 high_group=f"site high: {name} >= {thr:.4g}",
                                 low_group=f"site low: {name} < {thr:.4g}")
            new["cutoff"].pop("reference_group", None)
            rec["note"] = f"Youden cutoff on {card.cutoff.input}; high group = value >= threshold"
        else:
            new["logistic"]["score_cutoff"] = {
                "on": "linear_predictor", "threshold": thr, "high_when": ">=",
                "high_group": f"high (site cutoff, linear predictor >= {thr:.4g})",
                "low_group": f"low (site cutoff, linear predictor < {thr:.4g})",
                "where": f"site recalibration {date.isoformat()}"}
            rec["note"] = "Youden cutoff on the linear predictor; coefficients unchanged"
    else:
        raise RecalibrationError(f"unknown method {method!r} (logistic or cutoff)")
    new["recalibration"] = rec
    new["title"] = f"{card.title} [site-recalibrated {date.isoformat()}]"
    new["unpublished"] = list(card.unpublished)
    new["performance"] = []  # the paper's performance is not this version's
    return new


def write(card_dict: dict[str, Any], out_dir: str | Path) -> Path:
    """Write the new card as <id>-site-<YYYYMMDD>.toml (then -2, -3 ...), never overwriting."""
    parse_card(card_dict, "<new card>")  # refuse to write a card the loader would reject
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = card_dict["recalibration"]["date"].replace("-", "")
    base = f"{card_dict['id']}-site-{stamp}"
    for n in range(1, 1000):
        path = out / (f"{base}.toml" if n == 1 else f"{base}-{n}.toml")
        if n > 1:
            card_dict["version"] = f"{card_dict['version'].split('+')[0]}+site.{stamp}.{n}"
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(dumps(card_dict))
            return path
        except FileExistsError:
            continue
    raise RecalibrationError(f"{out}: too many site cards for {base}")


# ------------------------------------------------------------------ a small TOML writer


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else _str(k)


def _str(s: str) -> str:
    if "\n" in s:
        body = s.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
        return f'"""\n{body}"""'  # the newline after the opening quotes is not part of the value
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t") + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise CardError(f"cannot write non-finite number {v}")
        return repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise CardError(f"cannot write {type(v).__name__} to TOML")


def _is_table_array(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dumps(data: dict[str, Any], prefix: str = "") -> str:
    """TOML text for `data` (tables and arrays of tables as sections, other dicts inline)."""
    lines, later = [], []
    for k, v in data.items():
        if isinstance(v, dict):
            later.append(("table", k, v))
        elif _is_table_array(v) and k not in ("rows", "metrics", "scales"):
            later.append(("array", k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for kind, k, v in later:
        name = f"{prefix}.{_key(k)}" if prefix else _key(k)
        if kind == "table":
            out += f"\n[{name}]\n" + dumps(v, name)
        else:
            for item in v:
                out += f"\n[[{name}]]\n" + dumps(item, name)
    return out
