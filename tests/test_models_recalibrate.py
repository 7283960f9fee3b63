"""Recalibration recovers a known intercept and slope (or cutoff), writes a new card version
that records its data, and leaves the original card untouched."""

import csv
import datetime as dt
import hashlib
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from hccnode import cli
from hccnode.models import recalibrate
from hccnode.models.card import load_card, load_cards, parse_card
from hccnode.models.engine import InputValue, evaluate
from hccnode.models.validate import Outcome, Prediction

CARD_DIR = Path(__file__).resolve().parents[1] / "plugins" / "models"
CARDS = load_cards([CARD_DIR])
TIPM = CARDS["p004-tipm@1.0.0"]
DATE = dt.date(2026, 11, 23)
A_TRUE, B_TRUE = -0.8, 0.6


def tipm_inputs(rng):
    return {"nlr": InputValue(float(rng.uniform(1, 6)), "1", "syn"),
            "swe_sites_increased": InputValue(int(rng.integers(0, 10)), "count", "syn"),
            "albumin": InputValue(float(rng.uniform(30, 48)), "g/L", "syn"),
            "tumor_diameter_us": InputValue(float(rng.uniform(5, 12)), "cm", "syn")}


def site_data(n=3000, seed=2):
    """Outcomes drawn from logit P(TIN) = A_TRUE + B_TRUE * (TIPM linear predictor without intercept)."""
    rng = np.random.default_rng(seed)
    preds, outcomes, inputs = [], {}, []
    for i in range(n):
        uid = f"1.2.3.{i + 1}"
        x = tipm_inputs(rng)
        lp = evaluate(TIPM, x)["outputs"]["linear_predictor"]
        y = rng.random() < 1 / (1 + math.exp(-(A_TRUE + B_TRUE * lp)))
        preds.append(Prediction(uid, TIPM.id, TIPM.version, lp))
        outcomes[uid] = Outcome(uid, "PD" if y else "SD")
        inputs.append(x)
    return preds, outcomes, inputs


def test_logistic_recalibration_recovers_intercept_and_slope():
    preds, outcomes, inputs = site_data()
    y, s = recalibrate.binary_data(TIPM, preds, outcomes)
    new = recalibrate.recalibrated_card(TIPM, "logistic", y, s, "outcomes.csv", "ab" * 32, DATE)
    rec = new["recalibration"]
    assert abs(rec["fitted_intercept"] - A_TRUE) < 3 * rec["fitted_intercept_se"]
    assert abs(rec["fitted_slope"] - B_TRUE) < 3 * rec["fitted_slope_se"]
    site = parse_card(new, "site.toml")
    assert (site.status, site.version, site.derived_from) == ("site-recalibrated", "1.0.0+site.20261123", "p004-tipm@1.0.0")
    assert site.logistic.probability == "reported" and site.logistic.score_cutoff is None
    assert rec["n"] == 3000 and rec["events"] == int(y.sum()) and rec["data_sha256"] == "ab" * 32
    # The site card's probability is the fitted recalibration of the published linear predictor.
    x = inputs[0]
    lp = evaluate(TIPM, x)["outputs"]["linear_predictor"]
    r = evaluate(site, x)
    assert r["card_version"] == "1.0.0+site.20261123" and r["derived_from"] == "p004-tipm@1.0.0"
    assert r["outputs"]["probability"] == pytest.approx(1 / (1 + math.exp(-(rec["fitted_intercept"] + rec["fitted_slope"] * lp))))


def test_cutoff_recalibration_finds_the_known_threshold():
    rng = np.random.default_rng(4)
    ecv = rng.uniform(0.1, 0.8, 800)
    y = (ecv >= 0.35).astype(int)
    flip = rng.random(800) < 0.05
    y[flip] = 1 - y[flip]
    card = CARDS["p000-ecv-cutoff@1.0.0"]
    new = recalibrate.recalibrated_card(card, "cutoff", y, ecv, "o.csv", "0" * 64, DATE)
    site = parse_card(new, "site.toml")
    assert abs(site.cutoff.threshold - 0.35) < 0.02 and site.cutoff.high_when == ">="
    assert evaluate(site, {"tumor_ecv_iodine": InputValue(0.6, "1", "t")})["outputs"]["risk_group"] == f"site high: tumor_ecv_iodine >= {site.cutoff.threshold:.4g}"


def test_refusals():
    preds, outcomes, _ = site_data(n=8)
    with pytest.raises(recalibrate.RecalibrationError, match="too few"):
        recalibrate.binary_data(TIPM, preds, outcomes)
    with pytest.raises(recalibrate.RecalibrationError, match="predicts survival"):
        recalibrate.binary_data(CARDS["p001-tumor-ecv@1.0.0"], [], {})
    y = np.array([0, 1] * 10)
    with pytest.raises(recalibrate.RecalibrationError, match="cutoff card"):
        recalibrate.recalibrated_card(CARDS["p000-ecv-cutoff@1.0.0"], "logistic", y, y * 1.0, "o", "0", DATE)


@pytest.mark.parametrize("key", sorted(CARDS))
def test_toml_writer_round_trips_every_card(key):
    c = CARDS[key]
    assert tomllib.loads(recalibrate.dumps(c.raw)) == c.raw


def test_recalibrate_command_writes_new_version_and_keeps_original(tmp_path, capsys):
    preds, outcomes, _ = site_data(n=400, seed=9)
    with open(tmp_path / "outcomes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study_uid", "best_response"])
        w.writerows([(o.study_uid, o.best_response) for o in outcomes.values()])
    with open(tmp_path / "preds.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["study_uid", "card_id", "card_version", "score"])
        w.writerows([(p.study_uid, p.card_id, p.card_version, repr(p.score)) for p in preds])
    original = (CARD_DIR / "p004-tipm.toml").read_bytes()
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")
    args = ["-c", str(cfg), "models", "recalibrate", "p004-tipm", "--outcomes", str(tmp_path / "outcomes.csv"),
            "--predictions", str(tmp_path / "preds.csv"), "--date", "2026-11-23", "--cards", str(CARD_DIR)]
    assert cli.main(args) == 0
    assert cli.main(args) == 0  # a second run the same day gets its own file and version
    site_dir = tmp_path / "data" / "models" / "site"
    files = sorted(site_dir.glob("*.toml"))
    assert [f.name for f in files] == ["p004-tipm-site-20261123-2.toml", "p004-tipm-site-20261123.toml"]
    first, second = load_card(site_dir / "p004-tipm-site-20261123.toml"), load_card(files[0])
    assert first.version == "1.0.0+site.20261123" and second.version == "1.0.0+site.20261123.2"
    assert first.recalibration["data_sha256"] == hashlib.sha256((tmp_path / "outcomes.csv").read_bytes()).hexdigest()
    assert first.recalibration["predictions_source"] == "predictions file preds.csv"
    assert (CARD_DIR / "p004-tipm.toml").read_bytes() == original
    assert "p004-tipm@1.0.0 -> p004-tipm@1.0.0+site.20261123" in capsys.readouterr().out
    # the site versions load beside the published card and are listed under their own versions
    cards = load_cards([CARD_DIR, site_dir])
    assert {"p004-tipm@1.0.0", "p004-tipm@1.0.0+site.20261123", "p004-tipm@1.0.0+site.20261123.2"} <= set(cards)
