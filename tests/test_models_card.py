"""Card files: every shipped card loads with all required fields and known units; a bad
field is named in the error."""

import copy
import re
import tomllib
from pathlib import Path

import pytest

from hccnode.models import card as cardmod
from hccnode.models.card import (COHORT_FACTS, NOT_REPORTED, CardError, UNITS, load_card, load_cards, normalize_unit,
                                 parse_card)

CARD_DIR = Path(__file__).resolve().parents[1] / "plugins" / "models"
# The papers' texts lie beside the repository (in CI a copy of shared/ is laid beside the clone).
PAPERS = Path(__file__).resolve().parents[1].parent / "shared" / "papers"
NUMBER = re.compile(r"\d+(?:\.\d+)?")
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
    assert c.paper.endswith(".txt") and c.where and c.citation and ".txt" not in c.citation
    for key in ("n", "unit_of_analysis", "country", "design", "therapy", "modality"):
        assert c.cohort[key]
    assert c.outcome["direction"] and c.outcome["positive_label"]
    assert c.unpublished, "every paper leaves something unpublished; the card must say what"
    assert c.selfchecks, "every card carries worked numbers from its paper"
    for inp in c.inputs.values():
        assert inp.unit in UNITS and inp.source in ("marker", "lab", "clinical") and inp.definition


def _papers_or_skip() -> Path:
    if not PAPERS.is_dir():
        pytest.skip(f"the papers' texts are not beside the repository (looked for <repo>/../shared/papers = {PAPERS}); "
                    "the cards' quotes were checked against themselves only")
    return PAPERS


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_cites_a_paper_that_exists(path):
    assert (_papers_or_skip() / load_card(path).paper).is_file()


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_carries_its_cohort_with_quotes(path):
    """Issue 16 point 8: every cohort fact is there; every number a fact states is in the card's quotes
    (the paper's own words), so the card cannot state a number the paper does not print."""
    c = load_card(path)
    assert {q.fact for q in c.quotes} >= set(COHORT_FACTS)
    quoted = set(NUMBER.findall(" ".join(q.quote for q in c.quotes)))
    for q in c.quotes:
        assert q.quote or q.value.startswith(NOT_REPORTED), f"{q.fact}: a stated value needs its quote"
        assert q.where, f"{q.fact}: the quote needs its section or table"
        unquoted = [n for n in NUMBER.findall(q.value) if n not in quoted]
        assert not unquoted, f"{q.fact}: {unquoted} not in any of the card's quotes"


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_quotes_are_the_papers_words(path):
    c = load_card(path)
    text = _flat((_papers_or_skip() / c.paper).read_text(encoding="utf-8"))
    for q in c.quotes:
        if q.quote:
            assert _flat(q.quote) in text, f"{q.fact} quote not in {c.paper}: {q.quote[:80]!r}"
    ref = c.reference
    if ref.title != cardmod.NOT_GIVEN:
        assert ref.title in text
    if ref.authors != cardmod.NOT_GIVEN:
        assert all(a.split()[0] in text for a in ref.authors.split(", ")), "every author's surname is in the paper"
    if ref.year != cardmod.NOT_GIVEN:
        assert "Published online: " in text and ref.year in text
    if ref.doi:
        assert f"The online version contains supplementary material available at <https://doi.org/{ref.doi}>" in text
    if ref.journal == cardmod.NOT_GIVEN:   # said so rather than filled in from the DOI's prefix
        assert not re.search(r"Scientific Reports|European Radiology|Frontiers in", text.split("References")[0])


SIGNED = re.compile(r"(?<![\d.])[-−]?\d+(?:\.\d+)?")


def _unquoted_model_numbers(data: dict) -> list[str]:
    """The coefficients, constant, odds ratios, indicator and score cutoffs a card computes with
    that are no number of its 'model' quotes (the paper's table cells and sentences)."""
    quoted = {float(n.replace("−", "-")) for q in data.get("quotes", []) if q["fact"] == "model"
              for n in SIGNED.findall(q.get("quote", ""))}
    numbers = []
    lg = data.get("logistic") or {}
    if "intercept" in lg:
        numbers.append(("logistic.intercept", lg["intercept"]))
    for i, t in enumerate(lg.get("terms", [])):
        key = "odds_ratio" if "odds_ratio" in t else "beta"
        numbers.append((f"logistic.terms[{i}].{key}", t[key]))
        if "indicator" in t:
            numbers.append((f"logistic.terms[{i}].indicator.threshold", t["indicator"]["threshold"]))
    if "score_cutoff" in lg:
        numbers.append(("logistic.score_cutoff.threshold", lg["score_cutoff"]["threshold"]))
    if "cutoff" in data:
        numbers.append(("cutoff.threshold", data["cutoff"]["threshold"]))
    assert numbers, "a card computes with at least one published number"
    return [f"{name} = {value:g}" for name, value in numbers if float(value) not in quoted]


@pytest.mark.parametrize("path", CARD_FILES, ids=lambda p: p.stem)
def test_card_model_numbers_are_in_its_model_quotes(path):
    """Always, papers or not (issue 16, Tests): every number the card's model computes with is printed in
    one of the verbatim table cells or sentences it keeps (fact 'model', with section and table); the
    quotes themselves are compared with the papers in test_card_quotes_are_the_papers_words."""
    assert _unquoted_model_numbers(raw(path.name)) == []
    assert all(q.where for q in load_card(path).quotes if q.fact == "model")


def test_a_model_number_not_in_the_quotes_is_named():
    data = copy.deepcopy(raw("p002-nomogram.toml"))
    data["logistic"]["terms"][1]["beta"] = 0.413            # the paper prints 0.143
    data["logistic"]["intercept"] = 7.705                   # the paper prints -7.705
    assert _unquoted_model_numbers(data) == ["logistic.intercept = 7.705", "logistic.terms[1].beta = 0.413"]


def test_citations_name_what_the_text_gives_and_say_what_it_does_not():
    """Issue 16 point 8: authors, title, journal, year from the papers' title pages (001: 'Published online:
    20 April 2025'; the texts of 000, 002, 003 print no year, none prints a journal name)."""
    cards = {c.id: c for c in load_cards([CARD_DIR]).values()}
    assert cards["p001-tumor-ecv"].citation == (
        "Fu X, Guo Y, Zhang K, Cheng Z, Liu C, Ren Y, Miao L, Liu W, Jiang S, Zhou C, Su Y, Yang L. Prognostic impact "
        "of extracellular volume fraction derived from equilibrium contrast-enhanced CT in HCC patients receiving "
        "immune checkpoint inhibitors. 2025. (journal not given in the source text) doi:10.1038/s41598-025-97677-x")
    # the DOI when the text gives the article's own (only 001's does; 004's DOIs are its references')
    assert {c.id for c in cards.values() if c.reference.doi} == {"p001-tumor-ecv", "p001-liver-ecv"}
    assert cards["p001-liver-ecv"].reference.short() == "Fu X et al., 2025"
    assert cards["p000-ecv-cutoff"].reference.short() == "authors not given in the source text"
    assert cards["p003-nomogram"].citation.endswith("(journal and year not given in the source text)")
    assert cards["p000-ecv-logistic"].citation.startswith("[untitled: dual-energy CT assessment of ECV")
    assert cards["p000-ecv-logistic"].citation.endswith("(authors, title, journal and year not given in the source text)")


def test_cohort_facts_worked_from_the_papers():
    """Values read by hand from the papers (Table 1 of 001, 002, 003; 004 Results; 000 section 2.1)."""
    facts = {c.id: {(q.fact, q.value) for q in c.quotes} for c in load_cards([CARD_DIR]).values()}
    values = {cid: " | ".join(v for _, v in f) for cid, f in facts.items()}
    assert "HBV infection 63 of 151 (41.7%)" in values["p001-tumor-ecv"]            # 001 Table 1
    assert "Child-Pugh A 134 (88.7%), B 17 (11.3%)" in values["p001-liver-ecv"]
    assert "chronic hepatitis B 60 of 71 patients (84.5%)" in values["p002-nomogram"]  # 002 Table 1
    assert "BCLC B 41 (57.7%), C 30 (42.3%)" in values["p002-nicap-cutoff"]
    assert "78 patients: 32 disease control, 46 progression" in values["p003-nomogram"]
    assert ("bclc", "not reported (advanced HCC, ineligible for resection or ablation by MDT assessment)") in facts["p003-nomogram"]
    assert "training cohort 152: 110 TIE, 42 TIN (the modelled event)" in values["p004-tipm"]
    assert ("child_pugh", "not reported") in facts["p000-ecv-logistic"]
    limits = {cid: " ".join(v for f, v in fs if f == "limitation") for cid, fs in facts.items()}
    assert "equilibrium timing" in limits["p001-tumor-ecv"] and "viral hepatitis" in limits["p002-nomogram"]
    assert "empirically" in limits["p004-tipm"]


def test_a_cohort_fact_without_quote_or_missing_is_refused():
    def drop_quote(d):
        d["quotes"][0].pop("quote")
    assert "quotes[0].quote: missing" in _bad(drop_quote)
    assert "quotes: no entry for bclc" in _bad(lambda d: d.update(quotes=[q for q in d["quotes"] if q["fact"] != "bclc"]))


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
