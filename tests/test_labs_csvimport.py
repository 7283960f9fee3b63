"""CSV import: columns, errors naming file/row/column, all-or-nothing, --skip-bad-rows."""

import re

import pytest
from hypothesis import given, settings, strategies as st

from hccnode.labs import catalog
from hccnode.labs.csvimport import CsvImportError, import_csv, parse_row
from hccnode.store.db import Store

CAT = catalog.load()
HEADER = "patient_id,test,value,unit,time,issuer,status\n"


def write(tmp_path, text, name="labs.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_import_normalises_and_stores(store, tmp_path):
    f = write(tmp_path, HEADER + "P1,HCT,42,%,2024-01-05T08:00,HOSP,\n"
                                 "P1,1751-7,4.1,g/dL,2024-01-05T08:00:30+01:00,,F\n"
                                 "P1,crp,<5,mg/L,2024-01-05,,\n")
    report = import_csv(store, f, CAT)
    assert (report.rows, report.imported, report.skipped) == (3, 3, [])
    rows = store.query("SELECT patient_id, issuer, test, value, unit, comparator, status, source_ref FROM labs ORDER BY id")
    assert rows == [
        {"patient_id": "P1", "issuer": "HOSP", "test": "hct", "value": 0.42, "unit": "L/L", "comparator": None,
         "status": "F", "source_ref": "labs.csv:2"},
        {"patient_id": "P1", "issuer": None, "test": "albumin", "value": 41.0, "unit": "g/L", "comparator": None,
         "status": "F", "source_ref": "labs.csv:3"},
        {"patient_id": "P1", "issuer": None, "test": "crp", "value": None, "unit": None, "comparator": "<",
         "status": "F", "source_ref": "labs.csv:4"},
    ]
    assert store.query("SELECT source, outcome FROM labs_raw") == [{"source": "csv", "outcome": "imported"}]


def test_reimport_of_the_same_file_stores_nothing_new(store, tmp_path):
    f = write(tmp_path, HEADER + "P1,HCT,42,%,2024-01-05T08:00,,\n")
    import_csv(store, f, CAT)
    assert import_csv(store, f, CAT).imported == 0
    assert len(store.query("SELECT * FROM labs")) == 1


BAD = HEADER + ("P1,HCT,42,%,2024-01-05T08:00,,\n"
                "P2,HCT,42,mmol/L,2024-01-05T08:00,,\n"
                "P3,FOO,1,mg/L,2024-01-05T08:00,,\n"
                "P4,HCT,42,L/L,2024-01-05T08:00,,\n"
                "P5,HCT,42,%,05.01.2024,,\n"
                ",HCT,abc,%,2024-01-05T08:00,,Q\n")


def test_errors_name_file_row_and_column_and_nothing_is_imported(store, tmp_path):
    f = write(tmp_path, BAD)
    with pytest.raises(CsvImportError) as e:
        import_csv(store, f, CAT)
    got = {(x.file, x.row, x.column) for x in e.value.errors}
    assert got == {("labs.csv", 3, "unit"), ("labs.csv", 4, "test"), ("labs.csv", 5, "value"), ("labs.csv", 6, "time"),
                   ("labs.csv", 7, "patient_id"), ("labs.csv", 7, "status"), ("labs.csv", 7, "value")}
    assert "labs.csv: row 3, column 'unit': unknown unit 'mmol/L' for hct" in str(e.value)
    assert "row 5, column 'value'" in str(e.value) and "plausible" in str(e.value)
    assert store.query("SELECT * FROM labs") == [] and store.query("SELECT * FROM labs_raw") == []


def test_skip_bad_rows_imports_good_rows_and_reports_the_rest(store, tmp_path):
    report = import_csv(store, write(tmp_path, BAD), CAT, skip_bad_rows=True)
    assert report.imported == 1
    assert sorted({e.row for e in report.skipped}) == [3, 4, 5, 6, 7]
    assert [r["patient_id"] for r in store.query("SELECT patient_id FROM labs")] == ["P1"]


@pytest.mark.parametrize("text,msg", [
    ("patient_id,test,value,unit\nP1,HCT,42,%\n", "missing column(s) time"),
    ("patient_id,test,value,unit,time,uint\n", "unknown column(s) 'uint'"),
])
def test_header_errors(store, tmp_path, text, msg):
    with pytest.raises(CsvImportError, match=re.escape(msg)) as e:
        import_csv(store, write(tmp_path, text), CAT, skip_bad_rows=True)
    assert str(e.value).startswith("labs.csv: header:")


def test_semicolon_files_and_bom_and_case_of_header(store, tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("\ufeffPatient_ID;Test;Value;Unit;Time\nP1;HCT;42;%;2024-01-05T08:00\n".encode("utf-8"))
    assert import_csv(store, p, CAT).imported == 1


def test_extra_fields_in_a_row_are_an_error(store, tmp_path):
    with pytest.raises(CsvImportError, match="row 2.*more fields"):
        import_csv(store, write(tmp_path, HEADER + "P1,HCT,42,%,2024-01-05T08:00,,F,extra\n"), CAT)


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({k: st.text(max_size=20) for k in ("patient_id", "test", "value", "unit", "time", "issuer", "status")}))
def test_parse_row_returns_a_result_or_errors_naming_known_columns(rec):
    result, errors = parse_row(rec, "f.csv", 2, CAT)
    assert (result is None) == bool(errors)
    assert {e.column for e in errors} <= set(rec)
