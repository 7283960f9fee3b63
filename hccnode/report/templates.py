"""SR templates: which measurements go into the SR, with their codes and units (sr_templates/).

`load_template(dir)` reads `measurements.toml` and `private_codes.toml` from `dir` (default: the
shipped sr_templates/) and checks every entry; a bad entry raises TemplateError naming the file
and the entry. One unit per concept across the document: every entry of one concept name has
the same unit, and an entry's unit is the formula's or one the SR converts to exactly
(hccnode.report.reading.FACTORS: a fraction written in %).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from highdicom.sr import CodedConcept

from hccnode.imaging.measure import FORMULAS
from hccnode.imaging.phase_rules import PHASES
from hccnode.imaging.rois import ROLES
from hccnode.report.reading import FACTORS

STANDARD_SCHEMES = ("DCM", "SCT", "LN", "UCUM")
PRIVATE_SCHEME = "99HCCNODE"
MEASUREMENTS_FILE = "measurements.toml"
PRIVATE_CODES_FILE = "private_codes.toml"
MODEL_KEYS = ("group", "risk_group", "probability", "derived_points", "linear_predictor", "source", "limitation",
              "not_available", "term", "direction", "cohort")
CONTEXT_KEYS = ("phase", "delay", "level", "lesion")
LAB_KEYS = ("group", "source")
NOTE_KEYS = ("group", "research_use", "not_measured", "roi_source")
ROLE_KEYS = ("category", "type", "site")


class TemplateError(ValueError):
    """A template file or entry that cannot be used (message names the file and the entry)."""


def default_dir() -> Path:
    """The shipped templates: package data hccnode/data/sr_templates (in a source tree, a link to the
    top-level sr_templates/, so the wheel carries the files a site edits)."""
    return Path(resources.files("hccnode").joinpath("data", "sr_templates")).resolve()


@dataclass(frozen=True)
class Entry:
    """How one formula's measurements are written: concept name, UCUM unit, optional statistic."""

    formula: str
    name: CodedConcept
    unit: CodedConcept
    derivation: CodedConcept | None = None
    label: str = ""  # what a person reads (summary page), e.g. "ECV"


@dataclass(frozen=True)
class Role:
    label: str
    category: CodedConcept
    type: CodedConcept
    site: CodedConcept
    color: tuple[int, int, int] | None = None   # sRGB 0-255: the SEG's recommended display colour


@dataclass
class Template:
    version: str
    title: CodedConcept
    results_title: CodedConcept
    procedure: CodedConcept
    roles: dict[str, Role]
    measurements: dict[str, Entry]
    model: dict[str, CodedConcept]
    labs: dict[str, CodedConcept]
    lab_codes: dict[str, CodedConcept]
    notes: dict[str, CodedConcept]
    context: dict[str, CodedConcept] = field(default_factory=dict)   # phase, delay, level, lesion concepts
    phases: dict[str, CodedConcept] = field(default_factory=dict)    # contrast phase -> its code
    display_units: dict[str, str] = field(default_factory=dict)      # UCUM -> as a person reads it
    private_codes: dict[str, str] = field(default_factory=dict)  # value -> meaning
    digest: str = ""  # SHA-256 of both files: part of the output UIDs


def load_template(directory: str | Path | None = None) -> Template:
    """Read and check the SR template in `directory` (default: the shipped sr_templates/)."""
    d = Path(directory) if directory is not None else default_dir()
    texts = {}
    for name in (MEASUREMENTS_FILE, PRIVATE_CODES_FILE):
        path = d / name
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TemplateError(f"{path}: cannot read ({exc.strerror or exc})") from None
    data = {name: _parse(name, text) for name, text in texts.items()}
    private = _private_codes(data[PRIVATE_CODES_FILE])
    m = data[MEASUREMENTS_FILE]
    where = MEASUREMENTS_FILE

    def code(value, what: str) -> CodedConcept:
        return _code(value, f"{where}: {what}", private)

    def table(key: str, required: tuple[str, ...]) -> dict[str, CodedConcept]:
        t = m.get(key)
        if not isinstance(t, dict):
            raise TemplateError(f"{where}: [{key}] table is missing")
        missing = [k for k in required if k not in t]
        if missing:
            raise TemplateError(f"{where}: [{key}] lacks {', '.join(missing)}")
        return {k: code(t[k], f"[{key}] {k}") for k in required}

    version = m.get("version")
    if not isinstance(version, str) or not version:
        raise TemplateError(f"{where}: 'version' must be a non-empty string")
    for key in ("title", "results_title", "procedure"):
        if key not in m:
            raise TemplateError(f"{where}: '{key}' is missing")
    roles: dict[str, Role] = {}
    for role, spec in (m.get("roles") or {}).items():
        what = f"[roles.{role}]"
        if role not in ROLES:
            raise TemplateError(f"{where}: {what}: unknown role; roles are {', '.join(ROLES)}")
        if not isinstance(spec, dict) or not isinstance(spec.get("label"), str) or not spec["label"]:
            raise TemplateError(f"{where}: {what}: needs a text 'label'")
        for k in ROLE_KEYS:
            if k not in spec:
                raise TemplateError(f"{where}: {what}: '{k}' is missing")
        color = spec.get("color")
        if color is not None and not (isinstance(color, list) and len(color) == 3
                                      and all(isinstance(v, int) and 0 <= v <= 255 for v in color)):
            raise TemplateError(f"{where}: {what}: 'color' must be three integers 0-255 (sRGB), got {color!r}")
        roles[role] = Role(spec["label"], *(code(spec[k], f"{what} {k}") for k in ROLE_KEYS),
                           color=tuple(color) if color else None)
    missing_roles = [r for r in ROLES if r not in roles]
    if missing_roles:
        raise TemplateError(f"{where}: no [roles.X] table for {', '.join(missing_roles)}")
    measurements: dict[str, Entry] = {}
    entries = m.get("measurement") or []
    if not isinstance(entries, list):
        raise TemplateError(f"{where}: 'measurement' must be an array of tables ([[measurement]])")
    for i, e in enumerate(entries, 1):
        formula = e.get("formula") if isinstance(e, dict) else None
        what = f"[[measurement]] #{i}" + (f" (formula {formula!r})" if formula else "")
        if not isinstance(formula, str) or not formula:
            raise TemplateError(f"{where}: {what}: 'formula' is missing")
        if formula in measurements:
            raise TemplateError(f"{where}: {what}: formula listed twice")
        unknown = set(e) - {"formula", "name", "unit", "derivation", "label"}
        if unknown:
            raise TemplateError(f"{where}: {what}: unknown key(s) {', '.join(sorted(unknown))}")
        for k in ("name", "unit"):
            if k not in e:
                raise TemplateError(f"{where}: {what}: '{k}' is missing")
        unit = code(e["unit"], f"{what} unit")
        if unit.scheme_designator != "UCUM":
            raise TemplateError(f"{where}: {what}: unit must be a UCUM code, got scheme {unit.scheme_designator!r}")
        if formula in FORMULAS and FORMULAS[formula][0] != unit.value and (FORMULAS[formula][0], unit.value) not in FACTORS:
            raise TemplateError(f"{where}: {what}: unit {unit.value!r} is neither the formula's unit "
                                f"{FORMULAS[formula][0]!r} nor one the SR converts it to exactly")
        derivation = code(e["derivation"], f"{what} derivation") if "derivation" in e else None
        name = code(e["name"], f"{what} name")
        for other in measurements.values():
            if (other.name.scheme_designator, other.name.value) == (name.scheme_designator, name.value) \
                    and other.unit.value != unit.value:
                raise TemplateError(f"{where}: {what}: concept {name.meaning!r} is in {other.unit.value!r} for formula "
                                    f"{other.formula!r}; one concept has one unit across the document")
        label = e.get("label", name.meaning)
        if not isinstance(label, str) or not label.strip():
            raise TemplateError(f"{where}: {what}: 'label' must be a non-empty text")
        measurements[formula] = Entry(formula, name, unit, derivation, label)
    labs_table = m.get("labs") or {}
    lab_codes = {key: code(v, f"[labs.codes] {key}") for key, v in (labs_table.get("codes") or {}).items()}
    context_table = m.get("context") or {}
    phases = {p: code(v, f"[context.phases] {p}") for p, v in (context_table.get("phases") or {}).items()}
    missing_phases = [p for p in PHASES if p not in phases]
    if missing_phases:
        raise TemplateError(f"{where}: [context.phases] lacks {', '.join(missing_phases)}")
    display = m.get("display_units") or {}
    if not isinstance(display, dict) or not all(isinstance(v, str) for v in display.values()):
        raise TemplateError(f"{where}: [display_units] must map UCUM units to texts")
    digest = hashlib.sha256("\0".join(texts[n] for n in sorted(texts)).encode()).hexdigest()
    return Template(version=version, title=code(m["title"], "title"),
                    results_title=code(m["results_title"], "results_title"), procedure=code(m["procedure"], "procedure"),
                    roles=roles, measurements=measurements, model=table("model", MODEL_KEYS),
                    labs=table("labs", LAB_KEYS), lab_codes=lab_codes, notes=table("notes", NOTE_KEYS),
                    context={k: code(context_table[k], f"[context] {k}") if k in context_table else _missing("context", k)
                             for k in CONTEXT_KEYS},
                    phases=phases, display_units=dict(display), private_codes=private, digest=digest)


def _parse(name: str, text: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError(f"{name}: not valid TOML ({exc})") from None


def _private_codes(data: dict) -> dict[str, str]:
    where = PRIVATE_CODES_FILE
    if data.get("scheme") != PRIVATE_SCHEME:
        raise TemplateError(f"{where}: 'scheme' must be {PRIVATE_SCHEME!r}")
    out: dict[str, str] = {}
    for value, spec in (data.get("codes") or {}).items():
        if not isinstance(spec, dict) or not isinstance(spec.get("meaning"), str) or not spec["meaning"].strip():
            raise TemplateError(f"{where}: [codes] {value}: needs a 'meaning'")
        if not isinstance(spec.get("definition"), str) or not spec["definition"].strip():
            raise TemplateError(f"{where}: [codes] {value}: needs a 'definition'")
        if len(value) > 16:
            raise TemplateError(f"{where}: [codes] {value}: code values are at most 16 characters (SH)")
        out[value] = spec["meaning"]
    return out


def _missing(table: str, key: str):
    raise TemplateError(f"{MEASUREMENTS_FILE}: [{table}] lacks {key}")


def _code(value, what: str, private: dict[str, str]) -> CodedConcept:
    if not isinstance(value, dict):
        raise TemplateError(f"{what}: must be {{ scheme, value, meaning }}")
    unknown = set(value) - {"scheme", "value", "meaning"}
    missing = [k for k in ("scheme", "value", "meaning") if not isinstance(value.get(k), str) or not value[k].strip()]
    if unknown or missing:
        extra = f"unknown key(s) {', '.join(sorted(unknown))}" if unknown else f"missing {', '.join(missing)}"
        raise TemplateError(f"{what}: code must be {{ scheme, value, meaning }} ({extra})")
    scheme, val, meaning = value["scheme"], value["value"], value["meaning"]
    if scheme == PRIVATE_SCHEME:
        if val not in private:
            raise TemplateError(f"{what}: private code {val!r} is not listed in {PRIVATE_CODES_FILE}")
        if private[val] != meaning:
            raise TemplateError(f"{what}: private code {val!r} means {private[val]!r} in {PRIVATE_CODES_FILE}, "
                                f"not {meaning!r}")
    elif scheme not in STANDARD_SCHEMES:
        raise TemplateError(f"{what}: coding scheme {scheme!r} is not one of {', '.join(STANDARD_SCHEMES)} "
                            f"or {PRIVATE_SCHEME}")
    if len(meaning) > 64:
        raise TemplateError(f"{what}: meaning longer than 64 characters (LO)")
    return CodedConcept(value=val, scheme_designator=scheme, meaning=meaning)
