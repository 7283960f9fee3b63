"""Import lab results from a CSV file (a researcher's export).

Columns (header row required, any order, comma, semicolon or tab separated, UTF-8):
  patient_id  required  the Patient ID as in the DICOM studies
  test        required  a LOINC code (4544-3), a catalog key (hct) or a synonym (HCT); see labs.toml
  value       required  a number ("0.42", "42") or a censored value ("<5"); may be empty for a withdrawal
  unit        required  as listed for the test in labs.toml ("%", "L/L", "10*9/L", "g/dL" ...)
  time        required  when the blood was drawn, ISO 8601: 2024-03-05T08:30, with seconds or an
                        offset (+01:00, Z) if known; a date alone (2024-03-05) means "that day"
  issuer      optional  issuer of the patient ID (assigning authority), empty if none
  status      optional  HL7 result status: F (default), C, P, R, S, or X/D/W to withdraw
Errors name the file, the row (line number, header = 1) and the column. A file with any error
imports nothing, unless `skip_bad_rows`, which imports the good rows and reports the rest.
The file itself is kept in `labs_raw`; all rows go in one transaction.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from hccnode import log
from hccnode.labs import catalog as catalog_mod
from hccnode.labs.catalog import LabValueError
from hccnode.store.labs import WITHDRAW, Result, Stored, save_raw, store_results
from hccnode.labs.values import parse_iso_time, parse_value
from hccnode.store.db import Store

REQUIRED = ("patient_id", "test", "value", "unit", "time")
OPTIONAL = ("issuer", "status")


@dataclass(frozen=True)
class RowError:
    file: str
    row: int  # line number in the file, header = 1 (0: the file as a whole)
    column: str
    message: str

    def __str__(self) -> str:
        where = f"row {self.row}, column {self.column!r}" if self.row else "header"
        return f"{self.file}: {where}: {self.message}"


class CsvImportError(ValueError):
    def __init__(self, errors: list[RowError]):
        super().__init__("\n".join(str(e) for e in errors[:50]) + (
            f"\n... and {len(errors) - 50} more" if len(errors) > 50 else ""))
        self.errors = errors


@dataclass
class ImportReport:
    file: str
    rows: int = 0  # data rows read
    imported: int = 0  # rows stored (rows identical to a stored result are not stored twice)
    skipped: list[RowError] = field(default_factory=list)
    stored: Stored | None = None


def parse_row(rec: dict[str, str], name: str, line: int, catalog: catalog_mod.Catalog) -> tuple[Result | None, list[RowError]]:
    """One CSV record as a Result, or the errors found in it (every column checked)."""
    errs: list[RowError] = []

    def err(col: str, msg: str) -> None:
        errs.append(RowError(name, line, col, msg))

    get = lambda col: (rec.get(col) or "").strip()  # noqa: E731
    pid = get("patient_id")
    if not pid:
        err("patient_id", "empty")
    status = get("status").upper() or "F"
    kind = catalog.status_kind(status)
    if kind is None:
        err("status", f"{status[:10]!r} is not a result status (F, C, P, R, S, X, D, W)")
    test = catalog.test(get("test")) if get("test") else None
    if test is None:
        err("test", f"{get('test')[:40]!r} is not a known LOINC code, test or synonym (see labs.toml)")
    when = None
    try:
        when = parse_iso_time(get("time"))
    except ValueError as exc:
        err("time", str(exc) if get("time") else "empty")
    number = comparator = None
    if kind != WITHDRAW:  # a withdrawal needs no value; anything else does, also with a bad status
        try:
            v = parse_value(get("value"))
            number, comparator = v.number, v.comparator
            if test is not None and number is not None:
                number = catalog.normalise(test, number, get("unit"))
            elif test is not None:
                catalog.factor(test, get("unit"))
        except LabValueError as exc:
            err(exc.part, str(exc))
        except ValueError as exc:
            err("value", str(exc) if get("value") else "empty")
    if errs:
        return None, errs
    return Result(
        patient_id=pid, issuer=get("issuer") or None, test=test.key, code=get("test"), code_system="",
        code_text="", value=number, unit=test.unit if number is not None else None, value_text=get("value"),
        unit_text=get("unit"), comparator=comparator, status=status, kind=kind, observed=when.text,
        observed_start=when.start, observed_end=when.end, source_ref=f"{name}:{line}",
    ), []


def import_csv(store: Store, path: str | Path, catalog: catalog_mod.Catalog | None = None,
               skip_bad_rows: bool = False) -> ImportReport:
    """Import `path`; raises CsvImportError (nothing imported) on any error unless `skip_bad_rows`."""
    path = Path(path)
    catalog = catalog or catalog_mod.load(store.data_dir)
    name = path.name
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvImportError([RowError(name, 0, "", f"not UTF-8 text (byte {exc.start})")]) from None
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if missing or unknown:
        msg = "; ".join(filter(None, [missing and f"missing column(s) {', '.join(missing)}",
                                      unknown and f"unknown column(s) {', '.join(repr(u) for u in unknown)}"]))
        raise CsvImportError([RowError(name, 0, "", f"{msg} (columns: {', '.join(REQUIRED + OPTIONAL)})")])
    reader.fieldnames = header
    report = ImportReport(name)
    results: list[Result] = []
    errors: list[RowError] = []
    try:
        for rec in reader:
            report.rows += 1
            line = reader.line_num
            if None in rec:
                errors.append(RowError(name, line, "", "more fields than columns in the header"))
                continue
            if all(not (v or "").strip() for v in rec.values()):
                continue
            result, errs = parse_row(rec, name, line, catalog)
            errors.extend(errs)
            if result:
                results.append(result)
    except csv.Error as exc:
        errors.append(RowError(name, reader.line_num, "", f"unreadable CSV: {exc}"))
        if skip_bad_rows:  # the rest of the file cannot be read reliably
            raise CsvImportError(errors) from None
    if errors and not skip_bad_rows:
        raise CsvImportError(errors)
    report.skipped = errors
    with store.tx():
        raw_id = save_raw(store, raw, source="csv", outcome="imported", origin=name,
                          reason=f"{len(errors)} bad row(s) skipped" if errors else "")
        report.stored = store_results(store, results, source="csv", raw_id=raw_id)
    report.imported = report.stored.rows
    log.event("labs.csv_imported", rows=report.rows, stored=report.imported, skipped=len(errors),
              changes=len(report.stored.changes))
    return report
