"""Lab catalog: code resolution, unit normalisation, plausibility, windows, site overrides."""

import pytest
from hypothesis import given, strategies as st

from hccnode.labs import catalog
from hccnode.labs.catalog import CatalogError, LabValueError, unit_spelling

CAT = catalog.load()


@pytest.mark.parametrize("code,system,key", [
    ("4544-3", "LN", "hct"), ("20570-8", "LN", "hct"), ("1988-5", "LN", "crp"), ("26881-3", "LN", "il6"),
    ("751-8", "LN", "neutrophils"), ("731-0", "LN", "lymphocytes"), ("742-7", "LN", "monocytes"),
    ("777-3", "LN", "platelets"), ("1751-7", "LN", "albumin"), ("6768-6", "LN", "alp"), ("1834-1", "LN", "afp"),
    ("HCT", "L", "hct"), ("hct", "99LOCAL", "hct"), ("4544-3", "", "hct"), ("NEUT#", "", "neutrophils"),
])
def test_resolve_known_codes(code, system, key):
    assert CAT.resolve(code, system).key == key


def test_resolve_refuses_unknown_and_percent_differentials():
    assert CAT.resolve("770-8", "LN") is None  # Neutrophils/100 leukocytes: a percentage, not a count
    assert CAT.resolve("HCT", "LN") is None  # a LOINC system with a non-LOINC code is not a synonym lookup
    assert CAT.resolve("XYZ", "L") is None


@pytest.mark.parametrize("test,value,unit,expected", [
    ("hct", 42, "%", 0.42), ("hct", 0.42, "L/L", 0.42), ("hct", 0.42, "l/l", 0.42), ("hct", 0.42, "1", 0.42),
    ("albumin", 4.1, "g/dL", 41.0), ("albumin", 41, "g/L", 41.0), ("albumin", 4.1, "g/dl", 41.0),
    ("platelets", 250, "10*9/L", 250.0), ("platelets", 250, "10^3/µL", 250.0), ("platelets", 250, "x10³/μL", 250.0),
    ("platelets", 250, "K/uL", 250.0), ("platelets", 250000, "/uL", 250.0), ("platelets", 250000, "/mm3", 250.0),
    ("neutrophils", 4.2, "G/L", 4.2), ("neutrophils", 4.2, "× 10⁹/L", 4.2), ("lymphocytes", 1300, "cells/µL", 1.3),
    ("crp", 1.2, "mg/dL", 12.0), ("crp", 12, "mg/l", 12.0), ("il6", 0.01, "ng/mL", 10.0), ("il6", 10, "ng/L", 10.0),
    ("alp", 2, "µkat/L", 120.0), ("alp", 120, "IU/L", 120.0), ("afp", 400, "ug/L", 400.0),
])
def test_normalise(test, value, unit, expected):
    assert CAT.normalise(CAT.tests[test], value, unit) == pytest.approx(expected)


@pytest.mark.parametrize("test,unit", [("hct", "mmol/L"), ("albumin", "G/L"), ("neutrophils", "%"),
                                       ("afp", "IU/mL"), ("hct", ""), ("neutrophils", "g/L")])
def test_unknown_unit_is_an_error(test, unit):
    with pytest.raises(LabValueError) as e:
        CAT.normalise(CAT.tests[test], 1.0, unit)
    assert e.value.part == "unit" and "unknown unit" in str(e.value)


@pytest.mark.parametrize("test,value,unit", [("hct", 42, "L/L"), ("hct", 0.42, "%"), ("albumin", 41, "g/dL"),
                                             ("platelets", 250, "/uL"), ("crp", -1, "mg/L")])
def test_implausible_values_are_rejected_with_reason(test, value, unit):
    with pytest.raises(LabValueError) as e:
        CAT.normalise(CAT.tests[test], value, unit)
    assert e.value.part == "value" and "plausible range" in str(e.value)


@given(st.text(max_size=30))
def test_unit_spelling_is_idempotent(s):
    assert unit_spelling(unit_spelling(s)) == unit_spelling(s)


@given(st.floats(min_value=0.05, max_value=0.75))
def test_hct_percent_and_fraction_agree(frac):
    h = CAT.tests["hct"]
    assert CAT.normalise(h, frac * 100, "%") == pytest.approx(CAT.normalise(h, frac, "L/L"))


def test_windows_from_the_papers():
    w0 = CAT.window("000", "hct")
    assert (w0.hours, w0.side, w0.limit, w0.published) == (48, "before", "le", True)
    w1 = CAT.window("001", "hct")
    assert (w1.hours, w1.side, w1.limit, w1.published) == (168, "either", "lt", True)
    # paper 003, Patients (6): "laboratory results obtained within 2 weeks prior to treatment" = 14 x 24 h before
    for test in ("neutrophils", "lymphocytes", "monocytes", "platelets", "albumin", "alp", "afp"):
        w3 = CAT.window("003", test)
        assert (w3.hours, w3.side, w3.limit, w3.published, w3.anchor) == (336, "before", "le", True, "treatment start")
    assert CAT.window("003", "neutrophils").describe() == "<= 336 h before treatment start"
    for paper, test in [("000", "crp"), ("004", "albumin"), ("002", "hct")]:
        w = CAT.window(paper, test)
        assert not w.published and w.hours == CAT.default.hours
        assert "site default" in w.describe()


def test_site_file_overrides_default_window_and_adds_synonym(tmp_path):
    (tmp_path / "labs.toml").write_text(
        '[windows.default]\nhours = 72\nside = "before"\n[tests.hct]\nsynonyms = ["HKT"]\n', encoding="utf-8")
    c = catalog.load(tmp_path)
    assert c.window("004", "neutrophils").hours == 72
    assert c.window("000", "hct").hours == 48  # published windows are not touched
    assert c.resolve("HKT", "L").key == "hct"
    assert c.resolve("4544-3", "LN").key == "hct"  # the rest of the test entry is kept


def test_inconsistent_site_file_names_the_key(tmp_path):
    (tmp_path / "labs.toml").write_text('[windows.paper000]\nfoo = { hours = 1, side = "before", published = true }\n')
    with pytest.raises(CatalogError, match="windows.paper000.foo"):
        catalog.load(tmp_path)


def test_window_quotes_are_the_papers_words():
    """Every `quote` of labs.toml is the paper's own words (whitespace aside), compared with the papers
    at <repo>/../shared/papers when that folder is there."""
    import glob
    import tomllib
    from importlib import resources
    from pathlib import Path

    papers = Path(__file__).resolve().parents[1].parent / "shared" / "papers"
    data = tomllib.loads(resources.files("hccnode").joinpath("data", "labs.toml").read_text(encoding="utf-8"))
    quotes = [(paper[5:], test, w["quote"]) for paper, entries in data["windows"].items() if paper != "default"
              for test, w in entries.items() if isinstance(w, dict) and w.get("quote")]
    assert len(quotes) >= 20 and all(q.strip() for _, _, q in quotes)
    if not papers.is_dir():
        pytest.skip(f"the paper texts are not at {papers} (<repo>/../shared/papers): quotes not compared")
    for paper, test, quote in quotes:
        text = " ".join(Path(glob.glob(str(papers / f"{paper}_*.txt"))[0]).read_text(encoding="utf-8").split())
        assert " ".join(quote.split()) in text, (paper, test, quote)
