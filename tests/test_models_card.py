"""Card files: every shipped card loads with all required fields and known units; a bad
field is named in the error."""

import copy
import tomllib
from pathlib import Path

import pytest

from hccnode.models import card as cardmod
from hccnode.models.card import CardError, UNITS, load_card, load_cards, normalize_unit, parse_card

CARD_DIR = Path(__file__).resolve().parents[1] / "plugins" / "models"
PAPERS = Path("/work/shared/papers")
CARD_FILES = sorted(CARD_DIR.glob("*.toml"))


def raw(name: str) -> dict:
    return tomllib.loads((CARD_DIR / name).read_text(encoding="utf-8"))


def test_there_is_a_card_for_every_published_model():
    ids = {load_card(p).id for p in CARD_FILES}
    assert ids == {"p000-ecv-logistic", "p000-ecv-cutoff", "p001-tumor-ecv", "p001-liver-ecv",
                   "p002-nomogram", "p002-nicap-cutoff", "p003-nomogram", "p004-tipm"}


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_has_required_fields_and_known_units(path):
    c = load_card(path)
    assert c.path == path and path.stem == c.id
    assert c.paper.endswith(".txt") and c.where and c.citation
    for key in ("n", "unit_of_analysis", "country", "design", "therapy", "modality"):
        assert c.cohort[key]
    assert c.outcome["direction"] and c.outcome["positive_label"]
    assert c.unpublished, "every paper leaves something unpublished; the card must say what"
    assert c.selfchecks, "every card carries worked numbers from its paper"
    for inp in c.inputs.values():
        assert inp.unit in UNITS and inp.source in ("marker", "lab", "clinical") and inp.definition


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_cites_a_paper_that_exists(path):
    if not PAPERS.is_dir():
        pytest.skip("papers not available")
    assert (PAPERS / load_card(path).paper).is_file()


def test_units_and_aliases():
    assert normalize_unit("x10^9/L") == "10^9/L"
    assert normalize_unit("mL/min/100g") == "mL/min/100 g"
    assert normalize_unit("10^-3 mm²/s") == "10^-3 mm^2/s"
    assert normalize_unit("fraction") == "1"
    assert normalize_unit("mg/dL") is None
    assert normalize_unit("furlong") is None


def _bad(mutate, name="p002-nomogram.toml"):
    data = copy.deepcopy(raw(name))
    mutate(data)
    with pytest.raises(CardError) as exc:
        parse_card(data, "bad.toml")
    return str(exc.value)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("id"), "id: missing"),
    (lambda d: d.update(id="Bad ID"), "id:"),
    (lambda d: d.update(version="1"), "version:"),
    (lambda d: d.update(form="tree"), "form:"),
    (lambda d: d.update(colour="red"), "colour: unknown field"),
    (lambda d: d["source"].pop("paper"), "source.paper: missing"),
    (lambda d: d["cohort"].update(n=0), "cohort.n:"),
    (lambda d: d["outcome"].update(positive_responses=["XX"]), "outcome.positive_responses"),
    (lambda d: d["inputs"][0].update(unit="furlong"), "inputs[0].unit:"),
    (lambda d: d["inputs"][1].update(source="guess"), "inputs[1].source:"),
    (lambda d: d["inputs"][0].update(min=500.0), "inputs[0].max:"),
    (lambda d: d["logistic"]["terms"][0].update(input="nope"), "logistic.terms[0].input:"),
    (lambda d: d["logistic"]["terms"][1].update(odds_ratio=1.2), "logistic.terms[1].beta:"),
    (lambda d: d["logistic"].pop("intercept"), "logistic.probability:"),
    (lambda d: d["logistic"]["terms"][0].update(beta="0.043"), "logistic.terms[0].beta: expected float"),
    (lambda d: d["performance"][0].update(ci=[0.95, 0.99]), "performance[0].ci:"),
    (lambda d: d["selfcheck"][0].update(kind="vibes"), "selfcheck[0].kind:"),
    (lambda d: d["selfcheck"][0]["rows"][0].update(beta=0.043), "selfcheck[0].rows[0].beta:"),
    (lambda d: d["selfcheck"][1]["counts"].update(tp=-1), "selfcheck[1].counts.tp:"),
    (lambda d: d["selfcheck"][2]["positive_group"].pop("ps"), "selfcheck[2].positive_group: missing 'ps'"),
])
def test_bad_field_is_named(mutate, field):
    assert field in _bad(mutate)


def test_constant_failing_in_own_units_forbids_a_probability():
    def report_probability(d):
        d["logistic"]["probability"] = "reported"
        d["logistic"].pop("intercept_use")
        d["logistic"].pop("intercept_note")
    msg = _bad(report_probability, "p000-ecv-logistic.toml")
    assert "expect_consistent" in msg and "withheld" in msg


def test_constant_failing_in_own_units_is_left_out_of_the_score():
    """Issue 16 point 7: a constant the card's own check refutes may not be added to a reported score."""
    def keep_constant(d):
        d["logistic"].pop("intercept_use")
        d["logistic"].pop("intercept_note")
    msg = _bad(keep_constant, "p000-ecv-logistic.toml")
    assert "intercept_use must be 'left_out'" in msg
    c = load_card(CARD_DIR / "p000-ecv-logistic.toml")
    assert c.logistic.intercept == -22.624 and c.logistic.score_intercept is None  # Table 3, kept as printed


def test_cutoff_card_rejects_logistic_section():
    assert "logistic: only for form 'logistic'" in _bad(lambda d: d.update(logistic={}), "p001-tumor-ecv.toml")


def test_invalid_toml_names_the_file(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text("id = [", encoding="utf-8")
    with pytest.raises(CardError, match="x.toml: not valid TOML"):
        load_card(p)


def test_duplicate_card_versions_are_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "p.toml").write_text((CARD_DIR / "p004-tipm.toml").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(CardError, match="already defined"):
        load_cards([tmp_path / "a", tmp_path / "b"])


def test_find_card_prefers_published_and_names_known_cards():
    cards = load_cards([CARD_DIR])
    site = copy.copy(cards["p004-tipm@1.0.0"])
    site.version, site.status = "1.0.0+site.20260101", "site-recalibrated"
    cards[site.key] = site
    assert cardmod.find_card(cards, "p004-tipm").version == "1.0.0"
    assert cardmod.find_card(cards, "p004-tipm@1.0.0+site.20260101") is site
    with pytest.raises(KeyError, match="no card 'p999'"):
        cardmod.find_card(cards, "p999")


def test_odds_ratio_terms_use_ln_or():
    c = load_card(CARD_DIR / "p003-nomogram.toml")
    import math

    t = {t.input: t for t in c.logistic.terms}
    assert t["t2_sir_post"].from_odds_ratio and math.isclose(t["t2_sir_post"].beta, math.log(8.692))
    assert c.logistic.intercept is None and c.logistic.probability == "withheld"
