"""Model cards: published response models as TOML data files, loaded and checked.

A card (plugins/models/*.toml) holds one published model: its paper and table, cohort,
inputs with units and ranges, the model form and coefficients exactly as printed, the
outcome and its direction, reported performance, what the paper does not publish and the
worked numbers the self-check reproduces. `load_card` checks every field and names the bad
one; nothing in a card is filled in by code.

Forms:
  logistic  linear predictor = intercept (if published and not left out) + sum(beta x); a
            card leaves a published constant out (`intercept_use = "left_out"`, with
            `intercept_note`) when its own self-check shows the constant cannot reproduce the
            paper's cohort: the node then reports the terms, never a sum with that constant.
            A term may give
            `odds_ratio` instead of `beta` (beta = ln OR) and an `indicator` (x = 1 when
            input <op> threshold). Probability only when `probability = "reported"`.
  cutoff    one input against one threshold: two groups, with the paper's group statistics.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

SCHEMA = 1

# Canonical units a card may use, and spellings callers may send for them.
UNITS = {
    "1": "dimensionless ratio or fraction",
    "%": "percent",
    "mg/L": "milligram per litre",
    "pg/mL": "picogram per millilitre",
    "10^9/L": "10^9 cells per litre",
    "g/L": "gram per litre",
    "mm": "millimetre",
    "cm": "centimetre",
    "mL/min/100 g": "millilitre per minute per 100 g tissue",
    "10^-3 mm^2/s": "10^-3 square millimetre per second",
    "count": "whole number",
    "bool": "yes/no",
}
_ALIASES = {
    "": "1", "ratio": "1", "fraction": "1", "{ratio}": "1", "percent": "%",
    "10*9/l": "10^9/L", "x10^9/l": "10^9/L", "×10^9/l": "10^9/L", "10e9/l": "10^9/L", "g/l": "g/L",
    "/nl": "10^9/L", "giga/l": "10^9/L", "mg/l": "mg/L", "pg/ml": "pg/mL", "ng/l": "pg/mL",
    "ml/min/100g": "mL/min/100 g", "ml/100g/min": "mL/min/100 g", "ml/min/100 g": "mL/min/100 g",
    "10^-3mm^2/s": "10^-3 mm^2/s", "x10^-3mm^2/s": "10^-3 mm^2/s", "10-3mm2/s": "10^-3 mm^2/s",
    "10^-3mm2/s": "10^-3 mm^2/s", "um^2/ms": "10^-3 mm^2/s", "µm^2/ms": "10^-3 mm^2/s",
    "{count}": "count", "n": "count", "boolean": "bool", "yes/no": "bool", "{bool}": "bool",
}

INPUT_KINDS = ("continuous", "binary", "count")
INPUT_SOURCES = ("marker", "lab", "clinical")
FORMS = ("logistic", "cutoff")
OPS = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}
RESPONSES = ("CR", "PR", "SD", "PD")
# What every card says about its paper's cohort, each with the paper's own words (`[[quotes]]`).
COHORT_FACTS = ("etiology", "child_pugh", "bclc", "treatment", "response_timing", "n_events", "limitation")
NOT_REPORTED = "not reported"
NOT_GIVEN = "not given in the source text"
SELFCHECK_KINDS = ("coefficients", "constant", "two_by_two", "evaluate", "order", "hazard_ratios")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+([.+-][0-9A-Za-z.-]+)?$")


class CardError(ValueError):
    """A card file that cannot be used; the message names the file and the field."""


def normalize_unit(unit: str | None) -> str | None:
    """The canonical spelling of `unit`, or None if it is not a unit cards know."""
    if unit is None:
        return None
    text = str(unit).strip()
    if text in UNITS:
        return text
    key = text.lower().replace(" ", "").replace("²", "^2").replace("⁻³", "^-3")
    for canon in UNITS:
        if key == canon.lower().replace(" ", ""):
            return canon
    return _ALIASES.get(key)


@dataclass(frozen=True)
class Input:
    name: str
    label: str
    unit: str
    kind: str
    source: str
    definition: str
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Term:
    input: str
    beta: float                  # log-odds per unit (or for the indicator)
    from_odds_ratio: bool        # beta = ln(odds_ratio) because the paper printed only the OR
    indicator_op: str | None = None
    indicator_threshold: float | None = None


@dataclass(frozen=True)
class ScoreCutoff:
    on: str                      # probability | points | linear_predictor
    threshold: float
    high_when: str               # > | >= | unstated
    high_group: str
    low_group: str
    where: str = ""


@dataclass(frozen=True)
class Logistic:
    intercept: float | None
    probability: str             # reported | withheld
    probability_note: str
    terms: tuple[Term, ...]
    points_convention: str | None = None
    points_note: str = ""
    score_cutoff: ScoreCutoff | None = None
    intercept_use: str = "reported"   # reported | left_out (published, but not added to the score)
    intercept_note: str = ""

    @property
    def score_intercept(self) -> float | None:
        """The constant the node adds to the linear predictor: the published one unless left out."""
        return self.intercept if self.intercept_use == "reported" else None


@dataclass(frozen=True)
class Cutoff:
    input: str
    threshold: float
    high_when: str               # > | >= | unstated
    high_group: str
    low_group: str
    high_means: str
    low_means: str
    reference_group: str = ""


@dataclass(frozen=True)
class Quote:
    """One fact a card states about its paper, with the sentence or table cell it relies on."""

    fact: str        # one of COHORT_FACTS, or "model"
    value: str       # the card's statement; "not reported" when the paper gives none
    quote: str       # verbatim from the paper (whitespace aside); empty only for "not reported"
    where: str       # section, table


@dataclass(frozen=True)
class Reference:
    """How outputs cite the paper: never by the file it is stored in. A field the stored paper text
    does not give is NOT_GIVEN (nothing is filled in from elsewhere); `about` then says what the
    study is, from its own abstract, when the title is missing."""

    authors: str
    title: str
    journal: str
    year: str
    doi: str = ""
    about: str = ""

    def __str__(self) -> str:
        fields = {"authors": self.authors, "title": self.title, "journal": self.journal, "year": self.year}
        given = [v.rstrip(".") for v in fields.values() if v != NOT_GIVEN]
        if self.title == NOT_GIVEN and self.about:
            given.insert(min(1, len(given)), f"[untitled: {self.about}]")
        missing = [k for k, v in fields.items() if v == NOT_GIVEN]
        text = ". ".join(given) + "."
        if missing:
            names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
            text += f" ({names} {NOT_GIVEN})"
        return text + (f" doi:{self.doi}" if self.doi else "")

    def short(self) -> str:
        """First author (et al.) and year, for one-line listings; what the text does not give is said."""
        first = self.authors.split(", ")[0] if self.authors != NOT_GIVEN else "authors not given in the source text"
        more = " et al." if self.authors != NOT_GIVEN and ", " in self.authors else ""
        return first + more + (f", {self.year}" if self.year != NOT_GIVEN else "")


@dataclass
class Card:
    id: str
    version: str
    title: str
    form: str
    status: str
    paper: str
    where: str
    citation: str
    cohort: dict[str, Any]
    outcome: dict[str, Any]
    inputs: dict[str, Input]
    logistic: Logistic | None
    cutoff: Cutoff | None
    performance: list[dict[str, Any]]
    unpublished: list[str]
    inconsistencies: list[str]
    notes: str
    selfchecks: list[dict[str, Any]]
    derived_from: str = ""
    recalibration: dict[str, Any] = field(default_factory=dict)
    quotes: list[Quote] = field(default_factory=list)
    reference: Reference | None = None
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def limitations(self) -> list[str]:
        """What the paper itself names as its limitations, does not publish or gets wrong, as the node
        reports it with every result."""
        out = [f"stated by the paper: {q.value}" for q in self.quotes
               if q.fact == "limitation" and not q.value.startswith(NOT_REPORTED)]
        out += [f"unpublished: {u}" for u in self.unpublished]
        out += [f"inconsistent: {i}" for i in self.inconsistencies]
        return out


# ---------------------------------------------------------------- field readers


class _Fields:
    """Reads one TOML table, naming `where.key` in every error."""

    def __init__(self, data: Any, where: str, path: str):
        if not isinstance(data, dict):
            raise CardError(f"{path}: {where} must be a table")
        self.data, self.where, self.path = data, where, path
        self.used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> CardError:
        return CardError(f"{self.path}: {self._name(key)}: {problem}")

    def get(self, key: str, kind: type | tuple, required: bool = True, default: Any = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.fail(key, "missing (required)")
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(key, f"expected {name}, got {type(value).__name__} ({value!r})")
        if kind is float and not math.isfinite(value):
            raise self.fail(key, "must be a finite number")
        if kind is str and required and not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    def text_list(self, key: str) -> list[str]:
        items = self.get(key, list, required=False, default=[])
        for i, item in enumerate(items):
            if not isinstance(item, str) or not item.strip():
                raise self.fail(f"{key}[{i}]", "expected a non-empty string")
        return items

    def table(self, key: str, required: bool = True) -> "_Fields | None":
        value = self.get(key, dict, required=required)
        return None if value is None else _Fields(value, self._name(key), self.path)

    def done(self, allowed_extra: tuple[str, ...] = ()) -> None:
        unknown = set(self.data) - self.used - set(allowed_extra)
        if unknown:
            raise self.fail(sorted(unknown)[0], "unknown field (typo?)")


def _number(f: _Fields, key: str, required: bool = True) -> float | None:
    return f.get(key, float, required=required)


def _read_input(f: _Fields) -> Input:
    name = f.get("name", str)
    if not re.match(r"^[a-z][a-z0-9_]*$", name):
        raise f.fail("name", f"{name!r} must be lower_snake_case")
    unit = f.get("unit", str)
    if unit not in UNITS:
        raise f.fail("unit", f"{unit!r} is not a known unit (known: {', '.join(UNITS)})")
    kind = f.get("kind", str)
    if kind not in INPUT_KINDS:
        raise f.fail("kind", f"{kind!r} is not one of {', '.join(INPUT_KINDS)}")
    if (kind == "binary") != (unit == "bool"):
        raise f.fail("unit", "binary inputs, and only they, use unit 'bool'")
    source = f.get("source", str)
    if source not in INPUT_SOURCES:
        raise f.fail("source", f"{source!r} is not one of {', '.join(INPUT_SOURCES)}")
    lo, hi = _number(f, "min", kind != "binary"), _number(f, "max", kind != "binary")
    if lo is not None and hi is not None and not lo < hi:
        raise f.fail("max", f"must be greater than min ({lo})")
    inp = Input(name, f.get("label", str), unit, kind, source, f.get("definition", str), lo, hi)
    f.done()
    return inp


def _read_term(f: _Fields, inputs: dict[str, Input]) -> Term:
    name = f.get("input", str)
    if name not in inputs:
        raise f.fail("input", f"{name!r} is not one of the card's inputs")
    beta, odds = _number(f, "beta", False), _number(f, "odds_ratio", False)
    if (beta is None) == (odds is None):
        raise f.fail("beta", "give exactly one of beta and odds_ratio")
    if odds is not None and odds <= 0:
        raise f.fail("odds_ratio", "must be positive")
    ind = f.table("indicator", required=False)
    op = threshold = None
    if ind is not None:
        op = ind.get("op", str)
        if op not in OPS:
            raise ind.fail("op", f"{op!r} is not one of {', '.join(OPS)}")
        threshold = _number(ind, "threshold")
        ind.done()
        if inputs[name].kind == "binary":
            raise f.fail("indicator", "a binary input needs no indicator")
    f.done()
    return Term(name, math.log(odds) if odds is not None else beta, odds is not None, op, threshold)


def _read_high_when(f: _Fields) -> str:
    high_when = f.get("high_when", str)
    if high_when not in (">", ">=", "unstated"):
        raise f.fail("high_when", f"{high_when!r} is not '>', '>=' or 'unstated'")
    return high_when


def _read_logistic(f: _Fields, inputs: dict[str, Input]) -> Logistic:
    intercept = _number(f, "intercept", False)
    probability = f.get("probability", str)
    if probability not in ("reported", "withheld"):
        raise f.fail("probability", f"{probability!r} is not 'reported' or 'withheld'")
    if probability == "reported" and intercept is None:
        raise f.fail("probability", "'reported' needs a published intercept")
    note = f.get("probability_note", str, required=probability == "withheld", default="")
    intercept_use = f.get("intercept_use", str, required=False, default="reported")
    if intercept_use not in ("reported", "left_out"):
        raise f.fail("intercept_use", f"{intercept_use!r} is not 'reported' or 'left_out'")
    if intercept_use == "left_out" and (intercept is None or probability == "reported"):
        raise f.fail("intercept_use", "'left_out' needs a published intercept and a withheld probability")
    intercept_note = f.get("intercept_note", str, required=intercept_use == "left_out", default="")
    raw_terms = f.get("terms", list)
    if not raw_terms:
        raise f.fail("terms", "at least one term is required")
    terms = tuple(_read_term(_Fields(t, f"{f.where}.terms[{i}]", f.path), inputs) for i, t in enumerate(raw_terms))
    used = [t.input for t in terms]
    if len(set(used)) != len(used):
        raise f.fail("terms", "an input appears in more than one term")
    convention, points_note = None, ""
    pts = f.table("points", required=False)
    if pts is not None:
        convention = pts.get("convention", str)
        if convention != "max-abs-100":
            raise pts.fail("convention", f"{convention!r} is not 'max-abs-100'")
        points_note = pts.get("note", str)
        pts.done()
        for t in terms:
            if t.indicator_op is None and inputs[t.input].kind != "binary":
                raise pts.fail("convention", f"points need bounded terms; {t.input!r} is continuous without an indicator")
    score_cutoff = None
    sc = f.table("score_cutoff", required=False)
    if sc is not None:
        on = sc.get("on", str)
        if on not in ("probability", "points", "linear_predictor"):
            raise sc.fail("on", f"{on!r} is not probability, points or linear_predictor")
        score_cutoff = ScoreCutoff(on, _number(sc, "threshold"), _read_high_when(sc), sc.get("high_group", str),
                                   sc.get("low_group", str), sc.get("where", str, required=False, default=""))
        sc.done()
    f.done()
    return Logistic(intercept, probability, note, terms, convention, points_note, score_cutoff,
                    intercept_use, intercept_note)


def _read_cutoff(f: _Fields, inputs: dict[str, Input]) -> Cutoff:
    name = f.get("input", str)
    if name not in inputs:
        raise f.fail("input", f"{name!r} is not one of the card's inputs")
    if inputs[name].kind == "binary":
        raise f.fail("input", "a cutoff needs a continuous or count input")
    c = Cutoff(name, _number(f, "threshold"), _read_high_when(f), f.get("high_group", str), f.get("low_group", str),
               f.get("high_means", str), f.get("low_means", str), f.get("reference_group", str, required=False, default=""))
    if c.reference_group and c.reference_group not in (c.high_group, c.low_group):
        raise f.fail("reference_group", "must be high_group or low_group")
    f.done()
    return c


def _read_performance(items: Any, path: str) -> list[dict[str, Any]]:
    out = []
    for i, item in enumerate(items or []):
        f = _Fields(item, f"performance[{i}]", path)
        entry = {"metric": f.get("metric", str), "value": _number(f, "value"), "where": f.get("where", str)}
        ci = f.get("ci", list, required=False)
        if ci is not None:
            if len(ci) != 2 or not all(isinstance(v, (int, float)) for v in ci) or not ci[0] <= entry["value"] <= ci[1]:
                raise f.fail("ci", f"expected [lower, upper] around value {entry['value']}, got {ci!r}")
            entry["ci"] = [float(v) for v in ci]
        for key in ("cohort", "note"):
            value = f.get(key, str, required=False)
            if value:
                entry[key] = value
        f.done()
        out.append(entry)
    return out


def _read_quotes(items: list, path: str) -> list[Quote]:
    """`[[quotes]]`: every cohort fact once (or more), each with its verbatim source text."""
    out = []
    for i, item in enumerate(items):
        f = _Fields(item, f"quotes[{i}]", path)
        fact = f.get("fact", str)
        if fact not in COHORT_FACTS + ("model",):
            raise f.fail("fact", f"{fact!r} is not one of {', '.join(COHORT_FACTS + ('model',))}")
        value = f.get("value", str)
        quote = f.get("quote", str, required=not value.startswith(NOT_REPORTED), default="")
        out.append(Quote(fact, value, quote, f.get("where", str)))
        f.done()
    missing = [k for k in COHORT_FACTS if k not in {q.fact for q in out}]
    if missing:
        raise CardError(f"{path}: quotes: no entry for {', '.join(missing)} (say '{NOT_REPORTED}' when the paper gives none)")
    return out


def cohort_summary(card: "Card") -> list[str]:
    """The cohort facts as lines 'fact: value' for outputs (the quotes stay on the card)."""
    return [f"{q.fact.replace('_', ' ')}: {q.value}" for q in card.quotes if q.fact in COHORT_FACTS]


def parse_card(data: dict[str, Any], path: str = "<card>") -> Card:
    """Build a Card from parsed TOML, checking every field."""
    top = _Fields(data, "", path)
    schema_version = top.get("schema", int)
    if schema_version != SCHEMA:
        raise top.fail("schema", f"version {schema_version} is not supported (expected {SCHEMA})")
    card_id = top.get("id", str)
    if not _ID_RE.match(card_id):
        raise top.fail("id", f"{card_id!r} must be lower-case letters, digits and hyphens")
    version = top.get("version", str)
    if not _VERSION_RE.match(version):
        raise top.fail("version", f"{version!r} is not MAJOR.MINOR.PATCH")
    form = top.get("form", str)
    if form not in FORMS:
        raise top.fail("form", f"{form!r} is not one of {', '.join(FORMS)}")
    status = top.get("status", str)
    if status not in ("published", "site-recalibrated"):
        raise top.fail("status", f"{status!r} is not 'published' or 'site-recalibrated'")
    derived_from = top.get("derived_from", str, required=status != "published", default="")

    src = top.table("source")
    paper, where = src.get("paper", str), src.get("where", str)
    reference = Reference(*(src.get(k, str) for k in ("authors", "title", "journal", "year")),
                          src.get("doi", str, required=False, default=""), src.get("about", str, required=False, default=""))
    citation = str(reference)
    src.done()
    quotes = _read_quotes(top.get("quotes", list), path)

    coh = top.table("cohort")
    cohort = dict(coh.data)
    if coh.get("n", int) <= 0:
        raise coh.fail("n", "must be positive")
    n_pos = coh.get("n_positive", int, required=False)
    if n_pos is not None and not 0 <= n_pos <= cohort["n"]:
        raise coh.fail("n_positive", f"must be between 0 and n ({cohort['n']})")
    for key in ("unit_of_analysis", "country", "design", "therapy", "modality"):
        coh.get(key, str)
    coh.done(allowed_extra=("centres", "period"))

    out = top.table("outcome")
    outcome = dict(out.data)
    kind = out.get("kind", str)
    if kind not in ("binary", "survival"):
        raise out.fail("kind", f"{kind!r} is not 'binary' or 'survival'")
    for key in ("name", "definition", "criteria", "positive_label", "negative_label", "direction"):
        out.get(key, str)
    positive = out.get("positive_responses", list, required=kind == "binary", default=[])
    if kind == "binary" and (not positive or any(r not in RESPONSES for r in positive)):
        raise out.fail("positive_responses", f"expected a non-empty list of {', '.join(RESPONSES)}")
    # where the direction the card infers disagrees with the paper's own reading (shown with every result)
    out.get("direction_conflict", str, required=False)
    out.done(allowed_extra=("direction_conflict",))

    inputs: dict[str, Input] = {}
    for i, raw in enumerate(top.get("inputs", list)):
        inp = _read_input(_Fields(raw, f"inputs[{i}]", path))
        if inp.name in inputs:
            raise CardError(f"{path}: inputs[{i}].name: {inp.name!r} appears twice")
        inputs[inp.name] = inp
    if not inputs:
        raise top.fail("inputs", "at least one input is required")

    logistic = cutoff = None
    if form == "logistic":
        logistic = _read_logistic(top.table("logistic"), inputs)
        unused = set(inputs) - {t.input for t in logistic.terms}
    else:
        cutoff = _read_cutoff(top.table("cutoff"), inputs)
        unused = set(inputs) - {cutoff.input}
    if unused:
        raise top.fail("inputs", f"{sorted(unused)[0]!r} is not used by the model")
    if form == "logistic" and "cutoff" in data:
        raise top.fail("cutoff", "only for form 'cutoff'")
    if form == "cutoff" and "logistic" in data:
        raise top.fail("logistic", "only for form 'logistic'")

    performance = _read_performance(top.get("performance", list, required=False, default=[]), path)
    selfchecks = top.get("selfcheck", list, required=False, default=[])
    for i, check in enumerate(selfchecks):
        f = _Fields(check, f"selfcheck[{i}]", path)
        kind_ = f.get("kind", str)
        if kind_ not in SELFCHECK_KINDS:
            raise f.fail("kind", f"{kind_!r} is not one of {', '.join(SELFCHECK_KINDS)}")
        f.get("where", str)
    recal = top.get("recalibration", dict, required=status != "published", default={})
    card = Card(
        id=card_id, version=version, title=top.get("title", str), form=form, status=status,
        paper=paper, where=where, citation=citation, cohort=cohort, outcome=outcome, inputs=inputs,
        logistic=logistic, cutoff=cutoff, performance=performance,
        unpublished=top.text_list("unpublished"), inconsistencies=top.text_list("inconsistencies"),
        notes=top.get("notes", str, required=False, default=""), selfchecks=selfchecks,
        derived_from=derived_from, recalibration=recal, quotes=quotes, reference=reference, path=None, raw=data,
    )
    top.done(allowed_extra=("performance", "selfcheck", "logistic", "cutoff", "quotes"))
    # Every self-check's structure is checked by the self-check module itself, which names the field.
    from hccnode.models import selfcheck

    selfcheck.validate(card, path)
    return card


def load_card(path: str | Path) -> Card:
    """Read and check one card file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CardError(f"{p}: no such card file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"{p}: not valid TOML: {exc}") from None
    card = parse_card(data, str(p))
    card.path = p
    return card


def default_dirs(data_dir: str | Path | None = None) -> list[Path]:
    """Card directories: the shipped cards, then the site's recalibrated cards.

    The shipped cards are package data hccnode/data/models (in a source tree, a link to the
    top-level plugins/models/, so the wheel carries them)."""
    dirs = [Path(resources.files("hccnode").joinpath("data", "models")).resolve()]
    if data_dir is not None:
        dirs.append(Path(data_dir) / "models" / "site")
    return dirs


def load_cards(dirs: list[Path]) -> dict[str, Card]:
    """All cards under `dirs` (recursively), keyed 'id@version'; a bad card raises CardError."""
    cards: dict[str, Card] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*.toml")):
            card = load_card(p)
            if card.key in cards:
                raise CardError(f"{p}: {card.key} is already defined in {cards[card.key].path}")
            cards[card.key] = card
    return cards


def find_card(cards: dict[str, Card], ref: str) -> Card:
    """The card 'id@version', or for a bare 'id' its highest published version.

    Site-recalibrated versions are only used when named explicitly, so a result never
    silently switches from the paper's model to a site's.
    """
    if ref in cards:
        return cards[ref]
    matches = [c for c in cards.values() if c.id == ref and c.status == "published"]
    if not matches:
        known = ", ".join(sorted(cards)) or "none"
        raise KeyError(f"no card {ref!r} (known: {known})")
    return max(matches, key=lambda c: tuple(int(x) for x in c.version.split("+")[0].split("-")[0].split(".")))
