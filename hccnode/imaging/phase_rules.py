"""Loading, validating and evaluating the phase/kind rules data file (hccnode/data/phase_rules.toml).

The file format is documented at the top of the packaged file. `load_rules()` checks every rule
and raises `RulesError` listing each bad rule by name (and what is wrong with it), so a site's
edited file fails loudly at start-up rather than silently classifying nothing.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

KINDS = ("ct", "dect_iodine", "dect_vmi", "dect_vnc", "mr_t2", "mr_dwi", "mr_adc", "other")
PHASES = ("unenhanced", "arterial", "portal_venous", "equilibrium")

TEXT_FIELDS = frozenset({"modality", "manufacturer", "sop_class", "series_description", "protocol_name",
                         "text", "sequence_name", "contrast_agent", "contrast_route"})
LIST_FIELDS = frozenset({"image_type", "scanning_sequence", "contrast_phase", "materials"})
BOOL_FIELDS = frozenset({"multienergy", "contrast_start"})
NUMBER_FIELDS = frozenset({"kev", "text_kev", "b_max", "echo_time", "repetition_time"})
HEADER_FIELDS = TEXT_FIELDS | LIST_FIELDS | BOOL_FIELDS | NUMBER_FIELDS
IMAGE_FIELDS = frozenset({"aorta_hu", "liver_hu", "aorta_minus_liver", "air_fraction", "liver_gain",
                          "aorta_gain", "liver_aorta_ratio", "aorta_rank_high", "aorta_rank_low",
                          "n_enhanced", "sibling_aorta_max", "median_value", "p99_value"})
# [relations] margins (HU) and their defaults when a site's file has no such section.
RELATION_MARGINS = {"liver_rise_min": 15.0, "gap_drop_min": 15.0, "aorta_drop_min": 15.0,
                    "arterial_aorta_drop_min": 50.0, "liver_peak_tolerance": 15.0}
MATCHER_KEYS = frozenset({"pattern", "any_of", "present", "min", "max"})


class RulesError(ValueError):
    """The rules file cannot be used; the message lists every problem, by rule name."""


_NON_WORD = re.compile(r"[^\w+*]+|_+")
_DIGIT_LETTER = re.compile(r"(?<=\d)(?=[^\W\d_])|(?<=[^\W\d_])(?=\d)")


def normalise(text: str | None) -> str:
    """Lower case; non-letters/digits (except + and *) to spaces; split digits from letters."""
    if not text:
        return ""
    s = _NON_WORD.sub(" ", str(text).lower())
    s = _DIGIT_LETTER.sub(" ", s)
    return " ".join(s.split())


@dataclass(frozen=True)
class Matcher:
    field: str
    pattern: re.Pattern | None = None
    any_of: frozenset[str] | None = None
    present: bool | None = None
    min: float | None = None
    max: float | None = None

    def test(self, value: Any) -> bool:
        has = value is not None and value != "" and value != () and value != []
        if self.present is not None and has != self.present:
            return False
        if not has:
            # A value-matcher on a missing field never matches (present=false alone can).
            return self.present is False and self.pattern is None and self.any_of is None \
                and self.min is None and self.max is None
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if self.pattern is not None:
            if not any(self.pattern.search(normalise(v)) for v in values):
                return False
        if self.any_of is not None:
            if not any(str(v).strip().upper() in self.any_of for v in values):
                return False
        if self.min is not None or self.max is not None:
            nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if not nums:
                return False
            if not any((self.min is None or n >= self.min) and (self.max is None or n <= self.max) for n in nums):
                return False
        return True


@dataclass(frozen=True)
class Rule:
    name: str
    axis: str                       # "kind" or "phase"
    labels: frozenset[str]          # what the rule votes for
    weight: float
    when: tuple[Matcher, ...]
    unless: tuple[Matcher, ...] = ()
    fallback: bool = False
    source: str = "header"          # "header" or "image"

    def fires(self, record: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """(fired, the field values that made it fire)."""
        for m in self.when:
            if not m.test(record.get(m.field)):
                return False, {}
        for m in self.unless:
            if m.test(record.get(m.field)):
                return False, {}
        return True, {m.field: _jsonable(record.get(m.field)) for m in self.when}

    @property
    def label_text(self) -> str:
        return "|".join(sorted(self.labels))


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, float):
        return round(v, 2)
    return v


@dataclass(frozen=True)
class BValueTag:
    name: str
    creator: str
    group: int
    element: int
    modulo: int | None = None


@dataclass(frozen=True)
class RuleSet:
    version: str
    sha256: str
    source: str
    decide_at: float
    margin: float
    sibling_factor: float
    timing: dict[str, Any]
    image: dict[str, Any]
    header_rules: tuple[Rule, ...]
    image_rules: tuple[Rule, ...]
    relations: dict[str, Any] = field(default_factory=dict)
    b_value_tags: tuple[BValueTag, ...] = field(default=())

    @property
    def windows(self) -> dict[str, tuple[float, float]]:
        return {p: tuple(self.timing[p]) for p in ("arterial", "portal_venous", "equilibrium")}


DEFAULT_RULES = "phase_rules.toml"


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Load and validate a rules file (default: the packaged hccnode/data/phase_rules.toml)."""
    if path is None:
        raw = resources.files("hccnode").joinpath("data", DEFAULT_RULES).read_bytes()
        source = f"hccnode/data/{DEFAULT_RULES}"
    else:
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise RulesError(f"{p}: cannot read: {exc.strerror}") from None
        source = str(p)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from None
    return parse_rules(data, source=source, sha256=hashlib.sha256(raw).hexdigest())


def parse_rules(data: dict[str, Any], source: str = "<dict>", sha256: str = "") -> RuleSet:
    errors: list[str] = []
    meta = data.get("meta", {})
    version = str(meta.get("version", "")).strip()
    if not version:
        errors.append("[meta] version: missing")
    decide_at = _number(meta, "decide_at", 0.5, errors, "[meta]")
    margin = _number(meta, "margin", 0.15, errors, "[meta]")
    sibling = _number(meta, "sibling_factor", 0.8, errors, "[meta]")

    timing = dict(data.get("timing", {}))
    for p in ("arterial", "portal_venous", "equilibrium"):
        w = timing.get(p)
        if not (isinstance(w, list) and len(w) == 2 and all(isinstance(x, (int, float)) for x in w) and w[0] < w[1]):
            errors.append(f"[timing] {p}: expected [min_seconds, max_seconds] with min < max, got {w!r}")
    timing.setdefault("group_tolerance_s", 8.0)
    timing.setdefault("bolus_weight", 0.85)
    timing.setdefault("relative_weight", 0.6)
    timing.setdefault("max_groups", 8)
    for k in ("bolus_weight", "relative_weight"):
        if not (isinstance(timing[k], (int, float)) and 0 < timing[k] <= 1):
            errors.append(f"[timing] {k}: must be a number in (0, 1]")

    image = dict(data.get("image", {}))
    image.setdefault("use", "always")
    image.setdefault("confirm_below", 0.9)
    image.setdefault("max_slices", 24)
    image.setdefault("min_pixel_mm", 0.0)
    image.setdefault("vmi_kev_as_conventional", [60.0, 80.0])
    if image["use"] not in ("always", "when_needed", "never"):
        errors.append(f"[image] use: {image['use']!r} is not always, when_needed or never")
    if not (isinstance(image["min_pixel_mm"], (int, float)) and 0 <= image["min_pixel_mm"] <= 10):
        errors.append("[image] min_pixel_mm: must be a number of mm in [0, 10]")

    relations = dict(data.get("relations", {}))
    relations.setdefault("use", True)
    relations.setdefault("weight", 0.8)
    for k, default in RELATION_MARGINS.items():
        relations.setdefault(k, default)
        if not (isinstance(relations[k], (int, float)) and not isinstance(relations[k], bool) and relations[k] >= 0):
            errors.append(f"[relations] {k}: must be a number of HU >= 0")
    if not isinstance(relations["use"], bool):
        errors.append("[relations] use: must be true or false")
    if not (isinstance(relations["weight"], (int, float)) and 0 < relations["weight"] <= 1):
        errors.append("[relations] weight: must be a number in (0, 1]")

    tags = []
    for i, t in enumerate(data.get("b_value_tag", [])):
        try:
            tags.append(BValueTag(name=str(t["name"]), creator=str(t["creator"]), group=int(t["group"]),
                                  element=int(t["element"]), modulo=t.get("modulo")))
        except (KeyError, TypeError, ValueError) as exc:
            errors.append(f"[[b_value_tag]] #{i + 1}: needs name, creator, group, element ({exc})")

    names: set[str] = set()
    header = _parse_list(data.get("header_rule", []), "header", HEADER_FIELDS, names, errors)
    image_rules = _parse_list(data.get("image_rule", []), "image", IMAGE_FIELDS, names, errors)
    unknown = set(data) - {"meta", "timing", "image", "relations", "b_value_tag", "header_rule", "image_rule"}
    if unknown:
        errors.append(f"unknown sections: {', '.join(sorted(unknown))}")
    if errors:
        raise RulesError(f"{source}: {len(errors)} problem(s):\n  " + "\n  ".join(errors))
    return RuleSet(version=version, sha256=sha256, source=source, decide_at=decide_at, margin=margin,
                   sibling_factor=sibling, timing=timing, image=image, relations=relations, header_rules=tuple(header),
                   image_rules=tuple(image_rules), b_value_tags=tuple(tags))


def _number(table: dict, key: str, default: float, errors: list[str], where: str) -> float:
    v = table.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
        errors.append(f"{where} {key}: must be a number in [0, 1], got {v!r}")
        return default
    return float(v)


def _parse_list(items: list, source: str, fields: frozenset[str], names: set[str], errors: list[str]) -> list[Rule]:
    rules = []
    for i, item in enumerate(items):
        label = f"[[{source}_rule]] #{i + 1}"
        if not isinstance(item, dict):
            errors.append(f"{label}: not a table")
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            errors.append(f"{label}: missing name")
            continue
        label = f"rule {name!r}"
        problems: list[str] = []
        if name in names:
            problems.append("duplicate name")
        names.add(name)
        extra = set(item) - {"name", "kind", "phase", "weight", "when", "unless", "fallback"}
        if extra:
            problems.append(f"unknown keys {sorted(extra)}")
        if ("kind" in item) == ("phase" in item):
            problems.append("needs exactly one of kind = ... or phase = ...")
            axis, labels = "kind", frozenset()
        elif "kind" in item:
            axis, labels = "kind", _labels(item["kind"], KINDS, problems)
        else:
            axis, labels = "phase", _labels(item["phase"], PHASES, problems)
        w = item.get("weight")
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 < w <= 1:
            problems.append(f"weight must be a number in (0, 1], got {w!r}")
        when = _matchers(item.get("when"), fields, "when", problems, required=True)
        unless = _matchers(item.get("unless", {}), fields, "unless", problems, required=False)
        fallback = item.get("fallback", False)
        if not isinstance(fallback, bool):
            problems.append("fallback must be true or false")
        if problems:
            errors.append(f"{label}: " + "; ".join(problems))
            continue
        rules.append(Rule(name=name, axis=axis, labels=labels, weight=float(w), when=tuple(when),
                          unless=tuple(unless), fallback=fallback, source=source))
    return rules


def _labels(value: Any, allowed: tuple[str, ...], problems: list[str]) -> frozenset[str]:
    vals = [value] if isinstance(value, str) else value
    if not isinstance(vals, list) or not vals or not all(isinstance(v, str) for v in vals):
        problems.append(f"label must be a string or a list of strings, got {value!r}")
        return frozenset()
    bad = [v for v in vals if v not in allowed]
    if bad:
        problems.append(f"unknown label(s) {bad} (known: {', '.join(allowed)})")
    return frozenset(vals)


def _matchers(table: Any, fields: frozenset[str], where: str, problems: list[str], required: bool) -> list[Matcher]:
    if not isinstance(table, dict) or (required and not table):
        problems.append(f"{where} must be a table of field = {{matcher}}")
        return []
    out = []
    for fname, spec in table.items():
        if fname not in fields:
            problems.append(f"{where}: unknown field {fname!r} (known: {', '.join(sorted(fields))})")
            continue
        if not isinstance(spec, dict) or not spec:
            problems.append(f"{where}.{fname}: expected a matcher table like {{ pattern = '...' }}")
            continue
        bad = set(spec) - MATCHER_KEYS
        if bad:
            problems.append(f"{where}.{fname}: unknown matcher keys {sorted(bad)}")
            continue
        kw: dict[str, Any] = {}
        if "pattern" in spec:
            try:
                kw["pattern"] = re.compile(str(spec["pattern"]), re.IGNORECASE)
            except re.error as exc:
                problems.append(f"{where}.{fname}: bad regular expression: {exc}")
                continue
        if "any_of" in spec:
            if not isinstance(spec["any_of"], list) or not spec["any_of"]:
                problems.append(f"{where}.{fname}: any_of must be a non-empty list")
                continue
            kw["any_of"] = frozenset(str(v).strip().upper() for v in spec["any_of"])
        if "present" in spec:
            if not isinstance(spec["present"], bool):
                problems.append(f"{where}.{fname}: present must be true or false")
                continue
            kw["present"] = spec["present"]
        for k in ("min", "max"):
            if k in spec:
                if not isinstance(spec[k], (int, float)) or isinstance(spec[k], bool):
                    problems.append(f"{where}.{fname}: {k} must be a number")
                    break
                kw[k] = float(spec[k])
        else:
            out.append(Matcher(field=fname, **kw))
    return out
