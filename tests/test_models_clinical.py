"""Clinical-input CSV: documented format, every bad row named by line and column, nothing half-imported."""

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from hccnode.models import clinical, tipm
from hccnode.models.card import load_cards
from hccnode.models.clinical import ClinicalInputError, clinical_inputs, parse

CARDS = load_cards([Path(__file__).resolve().parents[1] / "plugins" / "models"])
KNOWN = clinical_inputs(CARDS.values())
UID = "1.2.826.0.1.3680043.8.498.1"


def test_known_clinical_inputs_are_the_ones_the_node_cannot_measure():
    assert set(KNOWN) == {"other_antitumor_therapy", "ps", "swe_sites_increased", "tumor_diameter_us"}


def test_parse_good_file_keeps_provenance():
    text = (
        "# site clinical inputs\n"
        "study_uid,name,value,unit,source,recorded_at\n"
        f"{UID},other_antitumor_therapy,Yes,bool,tumor board,2026-01-05\n"
        f"{UID},ps,23.4,ml/min/100g,GE AW perfusion,2026-01-04T10:00\n"
        "\n"
        f"{UID},swe_sites_increased,6,count,SWE A-F4,\n"
        "1.2.3,tumor_diameter_us,8.5,cm,,\n"
    )
    out = parse(text, KNOWN, "site.csv")
    s = out[UID]
    assert s["other_antitumor_therapy"].value is True
    assert s["ps"].value == 23.4 and s["ps"].unit == "mL/min/100 g"
    assert s["ps"].source == "GE AW perfusion (site.csv line 4, recorded 2026-01-04T10:00)"
    assert s["swe_sites_increased"].value == 6
    assert out["1.2.3"]["tumor_diameter_us"].source == "clinical input file (site.csv line 7)"


@pytest.mark.parametrize("row, expected", [
    (f"{UID},ps,abc,mL/min/100 g,,", "line 2: column value: not a number for ps"),
    (f"{UID},ps,23,mL/100 g,,", "line 2: column unit: 'mL/100 g' for ps; expected 'mL/min/100 g'"),
    (f"{UID},psi,23,mL/min/100 g,,", "line 2: column name: 'psi' is not a clinical input"),
    (f"{UID},crp,5,mg/L,,", "line 2: column name: 'crp' is not a clinical input"),
    (f"PAT-7,ps,23,mL/min/100 g,,", "line 2: column study_uid: not a DICOM UID"),
    (f"{UID},swe_sites_increased,10,count,,", "line 2: column value: 10 count is outside 0 to 9"),
    (f"{UID},swe_sites_increased,4.5,count,,", "line 2: column value: expected a whole number"),
    (f"{UID},other_antitumor_therapy,maybe,bool,,", "line 2: column value: expected yes/no"),
    (f"{UID},ps,23,mL/min/100 g,,05/01/2026", "line 2: column recorded_at"),
    (f"{UID},ps,23", "line 2: 3 fields, header has 6"),
])
def test_bad_rows_are_named(row, expected):
    with pytest.raises(ClinicalInputError) as exc:
        parse("study_uid,name,value,unit,source,recorded_at\n" + row + "\n", KNOWN, "c.csv")
    assert expected in str(exc.value)
    assert "PAT-7" not in str(exc.value)  # identifiers are not echoed


def test_header_problems_and_all_rows_reported():
    with pytest.raises(ClinicalInputError, match="header lacks column\\(s\\) unit"):
        parse("study_uid,name,value\n", KNOWN)
    with pytest.raises(ClinicalInputError, match="unknown column\\(s\\) mrn"):
        parse("study_uid,name,value,unit,mrn\n", KNOWN)
    with pytest.raises(ClinicalInputError) as exc:
        parse(f"study_uid,name,value,unit\n{UID},ps,x,mL/min/100 g\n{UID},ps,y,mL/min/100 g\n", KNOWN)
    assert len(exc.value.problems) == 2


def test_conflicting_duplicate_is_an_error_identical_duplicate_is_not():
    base = f"study_uid,name,value,unit\n{UID},ps,23,mL/min/100 g\n"
    assert parse(base + f"{UID},ps,23.0,mL/min/100 g\n", KNOWN)[UID]["ps"].value == 23.0
    with pytest.raises(ClinicalInputError, match="line 3: .*given twice"):
        parse(base + f"{UID},ps,24,mL/min/100 g\n", KNOWN)


def test_load_missing_and_non_utf8(tmp_path):
    with pytest.raises(ClinicalInputError, match="no such file"):
        clinical.load(tmp_path / "none.csv", CARDS.values())
    p = tmp_path / "latin1.csv"
    p.write_bytes("study_uid,name,value,unit,source\n1.2,ps,3,mL/min/100 g,Z\xfcrich\n".encode("latin-1"))
    with pytest.raises(ClinicalInputError, match="not UTF-8"):
        clinical.load(p, CARDS.values())


rows = st.lists(st.tuples(
    st.from_regex(r"1\.2\.[1-9][0-9]{0,5}", fullmatch=True),
    st.sampled_from(sorted(KNOWN)),
    st.integers(0, 9),
), min_size=1, max_size=12, unique_by=lambda r: (r[0], r[1]))


@settings(max_examples=100, deadline=None)
@given(rows)
def test_round_trip_of_valid_rows(rs):
    lines = ["study_uid,name,value,unit,source"]
    for uid, name, v in rs:
        spec = KNOWN[name]
        value = "yes" if spec.kind == "binary" and v % 2 else "no" if spec.kind == "binary" else str(v if spec.kind == "count" else v + 0.5)
        lines.append(f"{uid},{name},{value},{spec.unit},src")
    out = parse("\n".join(lines), KNOWN)
    assert sum(len(v) for v in out.values()) == len(rs)
    for uid, name, v in rs:
        got = out[uid][name].value
        spec = KNOWN[name]
        assert got == (bool(v % 2) if spec.kind == "binary" else v if spec.kind == "count" else v + 0.5)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_gives_result_or_clinical_error(text):
    try:
        parse("study_uid,name,value,unit\n" + text, KNOWN)
    except ClinicalInputError:
        pass


def test_swe_sites_increased():
    pre = [10, 10, 10, 10, 10, 8, 8, 8, 8]
    post = [11, 12, 9, 10, 13, 9, 7, 8.5, 8]
    assert tipm.sites_increased(pre, post) == 5  # A, B, E, F1, F3; equal values do not count
    assert tipm.delta_t_positive(5) and not tipm.delta_t_positive(4)
    with pytest.raises(ValueError, match="expected 9 sites"):
        tipm.sites_increased(pre[:8], post[:8])
    with pytest.raises(ValueError, match="site C"):
        tipm.sites_increased(pre[:2] + [float("nan")] + pre[3:], post)
