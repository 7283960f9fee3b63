"""The models CLI: thin shells over the library, clear usage errors."""

import json
from pathlib import Path

import pytest

from hccnode import cli

CARD_DIR = Path(__file__).resolve().parents[1] / "plugins" / "models"
UID = "1.2.826.0.1.3680043.8.498.5"


@pytest.fixture
def run(tmp_path, capsys):
    cfg = tmp_path / "hccnode.toml"
    cfg.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n', encoding="utf-8")

    def _run(*args):
        rc = cli.main(["-c", str(cfg), "models", *args, "--cards", str(CARD_DIR)])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return _run


def test_models_is_registered():
    assert "hccnode.models.commands" in cli.COMMAND_MODULES


def test_list_and_show(run):
    rc, out, _ = run("list", "--inputs")
    assert rc == 0 and out.count("@1.0.0") == 8
    assert "swe_sites_increased" in out and "from clinical" in out
    rc, out, _ = run("show", "p003-nomogram")
    assert rc == 0 and "intercept UNPUBLISHED" in out and "Research use only" in out
    # cited by authors and title, never by the stored text's file name (issue 16 point 8)
    assert "Han S, Meng F" in out and "Integration of multiparametric MRI" in out and ".txt" not in out
    assert "etiology: HBV infection 57 of 78 (73.1%)" in out and "response timing: mRECIST response at 6 months" in out
    rc, out, _ = run("show", "p004-tipm", "--json")
    assert rc == 0 and json.loads(out)["id"] == "p004-tipm"


def test_show_unknown_card_is_a_usage_error(run):
    rc, _, err = run("show", "p999")
    assert rc == 2 and "no card 'p999'" in err


def test_evaluate_with_inputs_and_clinical_csv(run, tmp_path):
    (tmp_path / "in.json").write_text(json.dumps({
        "tumor_size": {"value": 42.4, "unit": "mm", "source": "marker"},
        "nic_ap": {"value": 17.42, "unit": "%", "source": "marker"}}), encoding="utf-8")
    (tmp_path / "clin.csv").write_text(f"study_uid,name,value,unit,source\n{UID},ps,17.38,mL/min/100 g,AW 4.7\n",
                                       encoding="utf-8")
    rc, out, _ = run("evaluate", "p002-nomogram", "p004-tipm", "--inputs", str(tmp_path / "in.json"),
                     "--clinical", str(tmp_path / "clin.csv"), "--study", UID)
    assert rc == 0
    nomo, tipm = json.loads(out)
    assert nomo["status"] == "evaluated" and 0 < nomo["outputs"]["probability"] < 1
    assert nomo["inputs_used"]["ps"]["source"].startswith("AW 4.7 (clin.csv line 2")
    assert tipm["status"] == "not_evaluated" and any("'albumin'" in r for r in tipm["reasons"])


def test_evaluate_shows_p003_terms_and_its_direction_conflict(run, tmp_path):
    """Issue 16 point 2: each term with its value, cutoff, published OR and which way it pushes; the
    card's direction conflict; the derived total named as the node's, never as the paper's points."""
    (tmp_path / "in.json").write_text(json.dumps({
        "t2_sir_post": {"value": 1.62, "unit": "1", "source": "marker"},
        "adc_mean_post": {"value": 0.9, "unit": "10^-3 mm^2/s", "source": "marker"},
        "nlr": {"value": 5.0, "unit": "1", "source": "lab"}}), encoding="utf-8")
    rc, out, _ = run("evaluate", "p003-nomogram", "--inputs", str(tmp_path / "in.json"))
    assert rc == 0
    (r,) = json.loads(out)
    o = r["outputs"]
    t2, adc, nlr = o["terms"]
    # T2 SIR 1.62 >= 1.418: ln 8.692 = +2.162, raises; ADC 0.9 < 1.085: no effect; NLR 5 >= 4.41: ln 0.162 = -1.820
    assert (t2["value"], t2["cutoff"], t2["x"]) == (1.62, ">= 1.418", 1.0) and t2["odds_ratio"] == pytest.approx(8.692)
    assert t2["contribution"] == pytest.approx(2.1624, abs=1e-4) and t2["pushes"].startswith("raises")
    assert adc["x"] == 0.0 and adc["contribution"] == 0.0 and adc["pushes"].startswith("no effect (below the cutoff)")
    assert nlr["contribution"] == pytest.approx(-1.8202, abs=1e-4) and nlr["pushes"].startswith("lowers")
    assert "an elevated T2 SIR in patients who respond to treatment" in o["direction_note"]
    assert "points" not in o and o["derived_points_note"].startswith("hccnode's own derivation, not the paper's")


def test_evaluate_bad_clinical_file_is_a_usage_error(run, tmp_path):
    (tmp_path / "clin.csv").write_text(f"study_uid,name,value,unit\n{UID},ps,fast,mL/min/100 g\n", encoding="utf-8")
    rc, _, err = run("evaluate", "--clinical", str(tmp_path / "clin.csv"), "--study", UID)
    assert rc == 2 and "line 2: column value" in err
    rc, _, err = run("evaluate", "--clinical", str(tmp_path / "clin.csv"))
    assert rc == 2 and "--study" in err


def test_recalibrate_survival_card_is_refused(run, tmp_path):
    (tmp_path / "o.csv").write_text("study_uid,best_response\n1.2.3,PR\n", encoding="utf-8")
    (tmp_path / "p.csv").write_text("study_uid,card_id,card_version,score\n1.2.3,p001-tumor-ecv,1.0.0,30\n", encoding="utf-8")
    rc, _, err = run("recalibrate", "p001-tumor-ecv", "--outcomes", str(tmp_path / "o.csv"), "--predictions", str(tmp_path / "p.csv"))
    assert rc == 1 and "predicts survival" in err
