"""Per-study clinical inputs the node cannot measure, from a small CSV file.

Some model inputs come from outside the images and the lab feed: whether other anti-tumor
therapy was given (paper 000), perfusion CT PS (paper 002), the SWE stiffness change at 9
sites (paper 004), an ultrasound tumor diameter (paper 004). A site supplies them per study
in one CSV file, one value per row (long format, so a new model needs no new columns):

    study_uid,name,value,unit,source,recorded_at
    1.2.826.0.1.3680043.8.498.1,other_antitumor_therapy,yes,bool,tumor board minutes,2026-01-05
    1.2.826.0.1.3680043.8.498.1,ps,23.4,mL/min/100 g,GE AW 4.7 perfusion,2026-01-04
    1.2.826.0.1.3680043.8.498.1,swe_sites_increased,6,count,SWE Sequoia A-F4 week 6,2026-02-15

Columns: study_uid (the DICOM Study Instance UID the values belong to), name (a card input
whose source is 'clinical'; `hccnode models list --inputs` shows them), value (number, or
yes/no/true/false/1/0 for bool), unit (the card's unit; no conversion), source (free text:
where the value came from; it is carried into every result as provenance), recorded_at
(optional, ISO date or date-time). Blank lines and lines starting with '#' are skipped.
UTF-8, comma-separated, header required.

A file with any bad row is refused whole, with every problem listed by row and column, so a
half-imported file never feeds a model. A missing value is simply absent: the model that
needs it is then not evaluated, with the reason.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Iterable

from hccnode.models.card import Card, Input, normalize_unit
from hccnode.models.engine import InputValue

REQUIRED = ("study_uid", "name", "value", "unit")
OPTIONAL = ("source", "recorded_at")
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")
BOOL_WORDS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


class ClinicalInputError(ValueError):
    """A clinical-input file that cannot be used; `problems` lists every bad row and column."""

    def __init__(self, name: str, problems: list[str]):
        self.problems = problems
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        super().__init__(f"{name}: {len(problems)} problem(s):\n  " + "\n  ".join(shown))


def clinical_inputs(cards: Iterable[Card]) -> dict[str, Input]:
    """The inputs cards take from the clinical file, by name (one definition per name)."""
    out: dict[str, Input] = {}
    for card in cards:
        for inp in card.inputs.values():
            if inp.source == "clinical":
                prev = out.get(inp.name)
                if prev is not None and (prev.unit, prev.kind) != (inp.unit, inp.kind):
                    raise ValueError(f"clinical input {inp.name!r} has different units in two cards ({prev.unit}, {inp.unit})")
                out[inp.name] = inp
    return out


def _parse_value(spec: Input, text: str) -> tuple[object, str | None]:
    t = text.strip()
    if spec.kind == "binary":
        if t.lower() in BOOL_WORDS:
            return BOOL_WORDS[t.lower()], None
        return None, "expected yes/no, true/false or 1/0"
    try:
        x = float(t)
    except ValueError:
        return None, "not a number"
    if not math.isfinite(x):
        return None, "not a finite number"
    if spec.kind == "count":
        if x != int(x):
            return None, "expected a whole number"
        return int(x), None
    return x, None


def parse(text: str, known: dict[str, Input], name: str = "<clinical>") -> dict[str, dict[str, InputValue]]:
    """Parse clinical-input CSV text -> {study_uid: {input name: InputValue}}.

    Raises ClinicalInputError listing every problem (row numbers are file lines)."""
    lines = [(i, line) for i, line in enumerate(text.splitlines(), start=1)
             if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ClinicalInputError(name, ["no header row (expected columns: " + ", ".join(REQUIRED + OPTIONAL) + ")"])
    reader = csv.reader(io.StringIO("\n".join(line for _, line in lines)))
    rows = list(reader)
    header = [h.strip().lower() for h in rows[0]]
    problems: list[str] = []
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if missing:
        problems.append(f"line {lines[0][0]}: header lacks column(s) {', '.join(missing)}")
    if unknown:
        problems.append(f"line {lines[0][0]}: unknown column(s) {', '.join(unknown)} (allowed: {', '.join(REQUIRED + OPTIONAL)})")
    if len(set(header)) != len(header):
        problems.append(f"line {lines[0][0]}: a column name appears twice")
    if problems:
        raise ClinicalInputError(name, problems)
    col = {h: i for i, h in enumerate(header)}
    out: dict[str, dict[str, InputValue]] = {}
    for (lineno, _), row in zip(lines[1:], rows[1:]):
        where = f"line {lineno}"
        if len(row) != len(header):
            problems.append(f"{where}: {len(row)} fields, header has {len(header)}")
            continue
        cell = {h: row[i].strip() for h, i in col.items()}
        uid = cell["study_uid"]
        if not UID_RE.match(uid) or len(uid) > 64:
            problems.append(f"{where}: column study_uid: not a DICOM UID (digits and dots, at most 64 characters)")
            continue
        spec = known.get(cell["name"])
        if spec is None:
            problems.append(f"{where}: column name: {cell['name']!r} is not a clinical input of any card"
                            f" (known: {', '.join(sorted(known)) or 'none'})")
            continue
        unit = normalize_unit(cell["unit"])
        if unit != spec.unit:
            problems.append(f"{where}: column unit: {cell['unit']!r} for {spec.name}; expected {spec.unit!r}")
            continue
        value, err = _parse_value(spec, cell["value"])
        if err:
            problems.append(f"{where}: column value: {err} for {spec.name} ({cell['value']!r})")
            continue
        if spec.kind != "binary" and ((spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max)):
            problems.append(f"{where}: column value: {value} {spec.unit} is outside {spec.min:g} to {spec.max:g} for {spec.name}")
            continue
        recorded = cell.get("recorded_at", "")
        if recorded and not DATE_RE.match(recorded):
            problems.append(f"{where}: column recorded_at: {recorded!r} is not an ISO date or date-time")
            continue
        source = cell.get("source", "") or "clinical input file"
        source = f"{source} ({name} {where}" + (f", recorded {recorded})" if recorded else ")")
        study = out.setdefault(uid, {})
        prev = study.get(spec.name)
        if prev is not None and prev.value != value:
            problems.append(f"{where}: column value: {spec.name} given twice for the same study with different values")
            continue
        if prev is None:
            study[spec.name] = InputValue(value, spec.unit, source)
    if problems:
        raise ClinicalInputError(name, problems)
    return out


def load(path: str | Path, cards: Iterable[Card]) -> dict[str, dict[str, InputValue]]:
    """Read a clinical-input CSV file, checking it against the cards' clinical inputs."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ClinicalInputError(str(p), ["no such file"]) from None
    except UnicodeDecodeError as exc:
        raise ClinicalInputError(str(p), [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    return parse(text, clinical_inputs(cards), p.name)
