"""Compare the numbers of two TID 1500 measurement reports (SR datasets in, one row per number out).

Every NUM content item is named by where it sits and what it is: the tracking identifier of its
measurement group (TID 1501 / 1411: "Tumor (reader)", "Laboratory values", "Model p001-... 1.0.0"),
its concept name code, the algorithm name of its TID 4019 algorithm identification (our formula
id, when given), the "marker ..." parameter of that algorithm identification (hccnode's marker
name, e.g. hu_tumor_unenhanced; empty in other writers' SRs), its unit code, and its place among
items with the same name (1, 2 ...).
Tracking *identifiers*, not tracking UIDs, pair the items: the UIDs of the labs, model and notes
groups derive from the SR's own UID, which differs whenever the inputs do.

Tolerance: none by default. The pipeline is deterministic, so a recomputation from the same
inputs gives the same floating-point numbers. A NUM written by highdicom holds the value twice:
Numeric Value (DS, a decimal string of at most 16 characters, so a rounded form) and Floating
Point Value (FD, the double itself). Both are compared: DS as decimal numbers ("40" equals
"40.0"), FD when either report has one; a value counts as reproduced only when every form
present agrees. `rel_tol` > 0 allows a relative difference |a - b| <= rel_tol * max(|a|, |b|)
(e.g. for a recomputation on another CPU or library build, where the last bits of a float may
differ); it is reported with the result, never applied silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Iterator, Sequence

from pydicom.dataset import Dataset

TRACKING_IDENTIFIER = ("DCM", "112039")
ALGORITHM_NAME = ("DCM", "111001")
ALGORITHM_PARAMETERS = ("DCM", "111002")
MARKER_PARAMETER = "marker "  # hccnode.report.sr.provenance writes the marker name first


@dataclass(frozen=True)
class Number:
    """One NUM content item of an SR."""

    group: str            # tracking identifier of its measurement group ("" when none)
    concept: str          # concept name code "scheme:value"
    meaning: str          # concept name code meaning
    algorithm: str        # TID 4019 algorithm name ("" when none)
    marker: str           # the algorithm's "marker ..." parameter ("" when none)
    unit: str             # unit code value ("" when none)
    occurrence: int       # 1, 2 ... among items with the same group, concept and algorithm
    numeric: str | None   # Numeric Value (DS) as written, None when absent
    floating: float | None  # Floating Point Value (FD), None when absent

    @property
    def key(self) -> tuple[str, str, str, str, int]:
        return self.group, self.concept, self.algorithm, self.marker, self.occurrence

    def shown(self) -> str:
        if self.numeric is None and self.floating is None:
            return "(no value)"
        return self.numeric if self.numeric is not None else repr(self.floating)


@dataclass(frozen=True)
class Row:
    """One number compared: `a` and `b` are None when the item is absent from that report."""

    group: str
    concept: str
    meaning: str
    algorithm: str
    marker: str
    unit: str
    a: Number | None
    b: Number | None
    reproduced: bool
    why: str = ""         # what differs, when not reproduced


def _code(item: Dataset, seq: str = "ConceptNameCodeSequence") -> tuple[str, str, str]:
    codes = item.get(seq)
    if not codes:
        return "", "", ""
    c = codes[0]
    return str(c.get("CodingSchemeDesignator", "")), str(c.get("CodeValue", "") or c.get("LongCodeValue", "")), \
        str(c.get("CodeMeaning", ""))


def _identifier(children) -> str | None:
    for child in children or []:
        scheme, value, _ = _code(child)
        if (scheme, value) == TRACKING_IDENTIFIER and child.get("ValueType") == "TEXT":
            return str(child.get("TextValue", ""))
    return None


def _algorithm(item: Dataset) -> tuple[str, str]:
    """(algorithm name, marker parameter) of a NUM's TID 4019 algorithm identification."""
    name = marker = ""
    for child in item.get("ContentSequence") or []:
        scheme, value, _ = _code(child)
        text = str(child.get("TextValue", ""))
        if (scheme, value) == ALGORITHM_NAME:
            name = text
        elif (scheme, value) == ALGORITHM_PARAMETERS and not marker and text.startswith(MARKER_PARAMETER):
            marker = text[len(MARKER_PARAMETER):]
    return name, marker


def _walk(items, group: str) -> Iterator[tuple[str, Dataset]]:
    for item in items or []:
        children = item.get("ContentSequence")
        yield group, item
        if children:
            yield from _walk(children, _identifier(children) or group)


def numbers(sr: Dataset | Sequence[Dataset]) -> list[Number]:
    """Every NUM content item of `sr`, in document order; of several documents (the node's ROI
    SR and its results SR), in the order given."""
    docs = [sr] if isinstance(sr, Dataset) else list(sr)
    seen: Counter = Counter()
    out = []
    for group, item in (pair for doc in docs for pair in _walk(doc.get("ContentSequence"), "")):
        if item.get("ValueType") != "NUM":
            continue
        scheme, value, meaning = _code(item)
        concept = f"{scheme}:{value}"
        algorithm, marker = _algorithm(item)
        measured = (item.get("MeasuredValueSequence") or [None])[0]
        numeric = floating = None
        unit = ""
        if measured is not None:
            if "NumericValue" in measured:
                numeric = str(measured["NumericValue"].value).strip() if measured["NumericValue"].value is not None else None
            if "FloatingPointValue" in measured:
                floating = float(measured.FloatingPointValue)
            unit = _code(measured, "MeasurementUnitsCodeSequence")[1]
        name = (group, concept, algorithm, marker)
        seen[name] += 1
        out.append(Number(group, concept, meaning, algorithm, marker, unit, seen[name], numeric, floating))
    return out


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _close(x, y, rel_tol: float) -> bool:
    if x == y:
        return True
    if rel_tol <= 0:
        return False
    x, y = float(x), float(y)
    return abs(x - y) <= rel_tol * max(abs(x), abs(y))


def same_value(a: Number, b: Number, rel_tol: float = 0.0) -> tuple[bool, str]:
    """(reproduced, what differs) for two numbers; see the module docstring for the rule."""
    if a.unit != b.unit:
        return False, f"unit {a.unit!r} vs {b.unit!r}"
    if (a.numeric is None) != (b.numeric is None):
        return False, "Numeric Value present in only one report"
    if a.numeric is not None:
        da, db = _decimal(a.numeric), _decimal(b.numeric)
        if da is None or db is None:
            if a.numeric != b.numeric:
                return False, f"Numeric Value {a.numeric!r} vs {b.numeric!r} (not decimal numbers)"
        elif not _close(da, db, rel_tol):
            return False, f"Numeric Value (DS) {a.numeric} vs {b.numeric}"
    if (a.floating is None) != (b.floating is None):
        return False, "Floating Point Value present in only one report"
    if a.floating is not None and not _close(a.floating, b.floating, rel_tol):
        return False, f"Floating Point Value (FD) {a.floating!r} vs {b.floating!r}"
    return True, ""


def compare(a: Dataset | Sequence[Dataset], b: Dataset | Sequence[Dataset], rel_tol: float = 0.0) -> list[Row]:
    """One Row per number in either report (a report: one SR, or the documents of one
    analysis): A's order first, then numbers only B has."""
    if rel_tol < 0:
        raise ValueError(f"relative tolerance must be >= 0, got {rel_tol}")
    na, nb = numbers(a), numbers(b)
    by_key = {n.key: n for n in nb}
    rows = []
    for x in na:
        y = by_key.pop(x.key, None)
        if y is None:
            rows.append(Row(x.group, x.concept, x.meaning, x.algorithm, x.marker, x.unit, x, None, False, "only in A"))
        else:
            ok, why = same_value(x, y, rel_tol)
            rows.append(Row(x.group, x.concept, x.meaning, x.algorithm, x.marker, x.unit, x, y, ok, why))
    for y in nb:
        if y.key in by_key:
            rows.append(Row(y.group, y.concept, y.meaning, y.algorithm, y.marker, y.unit, None, y, False, "only in B"))
    return rows
