"""Validation report on synthetic outcomes from a known model: AUC, calibration and HR are
recovered within their CIs; plots are real PNGs; the HTML parses and references them."""

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from hccnode import cli
from hccnode.models import validate
from hccnode.models.card import load_cards
from hccnode.models.engine import InputValue, evaluate
from hccnode.store import model_results as mstore
from hccnode.store.db import Store

CARD_DIR = Path(__file__).resolve().parents[1] / "plugins" / "models"
CARDS = load_cards([CARD_DIR])
NOMO = CARDS["p002-nomogram@1.0.0"]
TUMOR = CARDS["p001-tumor-ecv@1.0.0"]
CUT = CARDS["p000-ecv-cutoff@1.0.0"]
TRUE_HR = 0.5


def draw_inputs(rng, n):
    return rng.uniform(10, 120, n), rng.uniform(5, 50, n), rng.uniform(5, 70, n)


def lp_of(size, nic, ps):
    return -7.705 + 0.043 * size + 0.143 * nic + 0.072 * ps  # paper 002, Table 5


def true_auc():
    """AUC of the true risk in the population, from a large independent sample."""
    rng = np.random.default_rng(12345)
    lp = lp_of(*draw_inputs(rng, 200_000))
    y = rng.random(lp.size) < 1 / (1 + np.exp(-lp))
    return validate.auc(y.astype(int), lp)


def synthetic(n=600, seed=7):
    """Studies where the p002 card is the true response model and tumor ECV >= 27.2 % halves the hazard."""
    rng = np.random.default_rng(seed)
    size, nic, ps = draw_inputs(rng, n)
    ecv = rng.uniform(10, 45, n)
    ecv_iodine = rng.uniform(0.2, 0.7, n)
    outcomes, preds = [], []
    for i in range(n):
        uid = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        r = evaluate(NOMO, {"tumor_size": InputValue(size[i], "mm", "syn"), "nic_ap": InputValue(nic[i], "%", "syn"),
                            "ps": InputValue(ps[i], "mL/min/100 g", "syn")})
        p = r["outputs"]["probability"]
        y = rng.random() < p
        t_event = rng.exponential(12.0 * (1 / TRUE_HR if ecv[i] > 27.2 else 1.0))
        t_cens = rng.uniform(6, 48)
        outcomes.append({"study_uid": uid, "best_response": "SD" if y else "PR", "response_criteria": "mRECIST",
                         "os_months": f"{min(t_event, t_cens):.4f}", "os_event": int(t_event <= t_cens)})
        preds.append({"study_uid": uid, "card_id": NOMO.id, "card_version": NOMO.version,
                      "score": r["outputs"]["linear_predictor"], "probability": p, "risk_group": ""})
        g = evaluate(TUMOR, {"tumor_ecv_hu": InputValue(ecv[i], "%", "syn")})["outputs"]["risk_group"]
        preds.append({"study_uid": uid, "card_id": TUMOR.id, "card_version": TUMOR.version, "score": ecv[i],
                      "probability": "", "risk_group": g})
        c = evaluate(CUT, {"tumor_ecv_iodine": InputValue(ecv_iodine[i], "1", "syn")})["outputs"]["risk_group"]
        preds.append({"study_uid": uid, "card_id": CUT.id, "card_version": CUT.version, "score": ecv_iodine[i],
                      "probability": "", "risk_group": c})
    return outcomes, preds


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


class StrictHTML(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.imgs = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
        else:
            self.stack.pop()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    d = tmp_path_factory.mktemp("val")
    outcomes, preds = synthetic()
    o = validate.parse_outcomes(write_csv(d / "outcomes.csv", outcomes).read_text(), "outcomes.csv")
    p = validate.parse_predictions(write_csv(d / "predictions.csv", preds).read_text(), "predictions.csv")
    rep = validate.run(CARDS, p, o, d / "out", n_boot=300, seed=3, source="predictions.csv")
    return d / "out", rep, outcomes


def by_card(rep, cid):
    (c,) = [c for c in rep["cards"] if c["card_id"] == cid]
    return c


def test_auc_and_calibration_recovered(report):
    _, rep, _ = report
    b = by_card(rep, "p002-nomogram")["binary"]
    lo, hi = b["auc_ci"]
    assert lo <= true_auc() <= hi and lo < b["auc"] < hi
    cal = b["calibration"]
    assert cal["slope_ci"][0] <= 1.0 <= cal["slope_ci"][1]
    assert cal["intercept_ci"][0] <= 0.0 <= cal["intercept_ci"][1]
    assert b["published_auc"]["value"] == 0.913


def test_bootstrap_is_seeded(report):
    _, rep, _ = report
    assert by_card(rep, "p002-nomogram")["binary"]["auc_bootstrap"] == {"n": 300, "seed": 3, "method": "percentile, stratified"}
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 80), rng.normal(size=80)
    assert validate.bootstrap_auc(y, s, 200, seed=5) == validate.bootstrap_auc(y, s, 200, seed=5)
    assert validate.bootstrap_auc(y, s, 200, seed=5) != validate.bootstrap_auc(y, s, 200, seed=6)


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y, s = rng.integers(0, 2, 200), np.round(rng.normal(size=200), 1)  # with ties
    assert validate.auc(y, s) == pytest.approx(roc_auc_score(y, s))


def test_hazard_ratio_recovered_by_risk_group(report):
    _, rep, _ = report
    g = by_card(rep, "p001-tumor-ecv")["os"]["by_group"]
    assert g["high_group"] == "Higher tumor ECV"
    assert g["hr_ci"][0] <= TRUE_HR <= g["hr_ci"][1]
    assert g["logrank_p"] < 0.05
    assert {p["value"] for p in g["published_hr"]} >= {0.384, 0.382}


def test_sensitivity_specificity_at_published_cutoff(report):
    _, rep, outcomes = report
    cut = by_card(rep, "p000-ecv-cutoff")["binary"]["at_published_cutoff"]
    assert cut["test_positive"] == "ECV > 0.45"
    assert cut["tp"] + cut["fn"] == sum(o["best_response"] == "SD" for o in outcomes)
    assert cut["published"] == {"sensitivity": 0.5658, "specificity": 0.9709}
    # ECV here is unrelated to the outcome: the test is no better than chance
    assert abs(cut["sensitivity"] + cut["specificity"] - 1) < 0.15


def test_cards_without_probability_say_so(report):
    _, rep, _ = report
    assert any("calibration not assessed" in n for n in by_card(rep, "p000-ecv-cutoff")["notes"])


def test_plots_are_png_images(report):
    import matplotlib.image as mpimg

    out, rep, _ = report
    plots = [p for c in rep["cards"] for p in c["plots"].values()]
    assert {"roc", "calibration"} <= set(by_card(rep, "p002-nomogram")["plots"])
    assert "km_os" in by_card(rep, "p001-tumor-ecv")["plots"]
    for name in plots:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_html_parses_and_references_every_plot(report):
    out, rep, _ = report
    p = StrictHTML()
    p.feed((out / "report.html").read_text(encoding="utf-8"))
    p.close()
    assert p.errors == [] and p.stack == []
    plots = {x for c in rep["cards"] for x in c["plots"].values()}
    assert set(p.imgs) == plots
    assert all((out / src).is_file() for src in p.imgs)
    assert "Research use only" in (out / "report.html").read_text(encoding="utf-8")


def test_json_report(report):
    out, rep, _ = report
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert data["research_use"] and {c["card_id"] for c in data["cards"]} == {"p000-ecv-cutoff", "p001-tumor-ecv", "p002-nomogram"}
    assert all(c["card_version"] == "1.0.0" for c in data["cards"])


@pytest.mark.parametrize("text, message", [
    ("study_uid,best_response\n1.2.3,XX\n", "line 2: column best_response"),
    ("study_uid,best_response\n1.2.3,PR\n1.2.3,PD\n", "line 3: column study_uid: the same study appears twice"),
    ("study_uid,os_months\n1.2.3,4\n", "must be given together"),
    ("study_uid,os_months,os_event\n1.2.3,-4,1\n", "line 2: column os_months"),
    ("study_uid,os_months,os_event\n1.2.3,4,2\n", "line 2: column os_event"),
    ("uid,best_response\n", "header lacks column(s) study_uid"),
    ("study_uid,mrn\n", "unknown column(s) mrn"),
])
def test_bad_outcomes_are_named(text, message):
    with pytest.raises(validate.ValidationInputError) as exc:
        validate.parse_outcomes(text, "o.csv")
    assert message in str(exc.value) and str(exc.value).startswith("o.csv:")


def test_validate_command_reads_model_results_by_default(tmp_path, capsys):
    data = tmp_path / "data"
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{data}"\n', encoding="utf-8")
    outcomes, _ = synthetic(n=120, seed=11)
    st = Store(data)
    rng = np.random.default_rng(0)
    for o in outcomes:
        r = evaluate(TUMOR, {"tumor_ecv_hu": InputValue(float(rng.uniform(10, 45)), "%", "marker")})
        mstore.record(st, o["study_uid"], r)
    st.close()
    write_csv(tmp_path / "outcomes.csv", outcomes)
    rc = cli.main(["-c", str(cfg), "models", "validate", "--outcomes", str(tmp_path / "outcomes.csv"),
                   "--out", str(tmp_path / "rep"), "--bootstrap", "100", "--cards", str(CARD_DIR)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "p001-tumor-ecv@1.0.0: joined 120/120" in out
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["predictions_source"].startswith("model_results table")
    assert "by_group" in rep["cards"][0]["os"]


def test_validate_command_usage_errors(tmp_path, capsys):
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "d"}"\n', encoding="utf-8")
    (tmp_path / "o.csv").write_text("study_uid,best_response\n1.2.3,XX\n", encoding="utf-8")
    assert cli.main(["-c", str(cfg), "models", "validate", "--outcomes", str(tmp_path / "o.csv"), "--out", str(tmp_path / "r")]) == 2
    assert "o.csv: line 2: column best_response" in capsys.readouterr().err


def test_the_direction_conflict_is_shown_with_a_validation(tmp_path):
    """Issue 16 point 2, wherever a result is shown: paper 003's card's direction conflict heads its
    validation (an AUC below 0.5 on a site's data may be the other reading of the paper)."""
    p003 = CARDS["p003-nomogram@1.0.0"]
    preds = [validate.Prediction(f"1.2.{i}", p003.id, p003.version, float(i), None, "") for i in range(4)]
    outcomes = validate.parse_outcomes("study_uid,best_response\n1.2.0,PR\n1.2.1,SD\n1.2.2,PR\n1.2.3,PD\n")
    rep = validate.run(CARDS, preds, outcomes, tmp_path, n_boot=20)
    (card,) = rep["cards"]
    assert card["direction_conflict"].startswith("Direction conflict: the card reads Table 4's odds ratios")
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<p class="warn">Direction conflict: the card reads Table 4' in html
