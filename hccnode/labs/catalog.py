"""The lab catalog: which tests the node knows, their codes, units and time windows.

Everything here comes from `hccnode/data/labs.toml` (plus a site's `<data_dir>/labs.toml`);
this module only reads, checks and applies it. Unknown codes resolve to None, unknown units
and implausible values raise `LabValueError` with the reason: nothing is guessed.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

LOINC_SYSTEMS = frozenset({"LN", "LOINC", "HTTP://LOINC.ORG", "2.16.840.1.113883.6.1"})
SIDES = ("before", "after", "either")
LIMITS = ("le", "lt")


class CatalogError(ValueError):
    """The catalog file is inconsistent; the message names the key."""


class LabValueError(ValueError):
    """A value that cannot be accepted; `part` says whether the "unit" or the "value" is at fault."""

    def __init__(self, message: str, part: str):
        super().__init__(message)
        self.part = part


@dataclass(frozen=True)
class Test:
    key: str  # short name used throughout the node: "hct", "crp", ...
    name: str
    loinc: tuple[str, ...]
    synonyms: tuple[str, ...]
    unit: str  # canonical unit
    plausible: tuple[float, float]  # in the canonical unit
    units: dict[str, float]  # accepted spelling -> factor into the canonical unit


@dataclass(frozen=True)
class Window:
    """How far a result may be from the scan for one paper's use of one test."""

    paper: str
    test: str
    hours: float
    side: str  # before | after | either (the result relative to the scan)
    limit: str  # le: gap <= hours; lt: gap < hours
    published: bool  # False: the paper gives no window, `hours` etc. are the site default
    quote: str = ""
    source: str = ""
    anchor: str = "the scan"  # what the gap is counted from (paper 003: treatment start)

    def describe(self) -> str:
        op = "<=" if self.limit == "le" else "<"
        where = {"before": " before ", "after": " after ", "either": " of "}[self.side] + self.anchor
        text = f"{op} {self.hours:g} h{where}"
        if not self.published:
            text += f" (site default: paper {self.paper} publishes no window)"
        return text


_SUPERSCRIPTS = str.maketrans({"⁰": "0", "¹": "1", "²": "2", "³": "3", "⁴": "4", "⁵": "5",
                               "⁶": "6", "⁷": "7", "⁸": "8", "⁹": "9"})
_LITRE = re.compile(r"(?<![A-Za-z])([munpdfk]?)l(?![A-Za-z])")
_SUPER_RUN = re.compile(r"([0-9])([⁰¹²³⁴⁵⁶⁷⁸⁹]+)")


def unit_spelling(unit: str) -> str:
    """Canonical spelling for comparison: no spaces, u for micro, x for times, ^n for superscripts, L for litre."""
    s = "".join(unit.split()).replace("µ", "u").replace("μ", "u").replace("×", "x")
    s = _SUPER_RUN.sub(lambda m: m[1] + "^" + m[2].translate(_SUPERSCRIPTS), s)
    return _LITRE.sub(lambda m: m[1] + "L", s)


class Catalog:
    def __init__(self, data: dict[str, Any]):
        self.data = data
        groups = data.get("unit_groups", {})
        self.tests: dict[str, Test] = {}
        for key, t in data.get("tests", {}).items():
            try:
                units = groups[t["unit_group"]] if "unit_group" in t else t["units"]
                low, high = t["plausible"]
                test = Test(
                    key=key,
                    name=t["name"],
                    loinc=tuple(t.get("loinc", ())),
                    synonyms=tuple(t.get("synonyms", ())),
                    unit=t["unit"],
                    plausible=(float(low), float(high)),
                    units={unit_spelling(u): float(f) for u, f in units.items()},
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise CatalogError(f"tests.{key}: missing or malformed entry ({exc})") from None
            if test.units.get(unit_spelling(test.unit)) != 1.0:
                raise CatalogError(f"tests.{key}: canonical unit {test.unit!r} must be listed with factor 1")
            self.tests[key] = test
        self._by_loinc = {c: t for t in self.tests.values() for c in t.loinc}
        self._by_synonym = {s.upper(): t for t in self.tests.values() for s in (t.synonyms + (t.key,))}
        self.windows: dict[tuple[str, str], Window] = {}
        windows = data.get("windows", {})
        default = windows.get("default")
        if not default:
            raise CatalogError("windows.default: missing")
        self.default = self._window("default", "*", dict(default, published=False), "", "windows.default")
        for paper, entries in windows.items():
            if paper == "default":
                continue
            source = entries.get("source", "")
            for test_key, w in entries.items():
                if test_key == "source":
                    continue
                if test_key not in self.tests:
                    raise CatalogError(f"windows.{paper}.{test_key}: unknown test")
                name = paper.removeprefix("paper")
                if not w.get("published", False):
                    w = dict(default, quote=w.get("quote", ""), published=False)
                self.windows[(name, test_key)] = self._window(name, test_key, w, source, f"windows.{paper}.{test_key}")
        self.hl7 = data.get("hl7", {})

    @staticmethod
    def _window(paper: str, test: str, w: dict, source: str, where: str) -> Window:
        try:
            win = Window(paper, test, float(w["hours"]), w["side"], w.get("limit", "le"),
                         bool(w.get("published", False)), w.get("quote", ""), source, w.get("anchor", "the scan"))
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogError(f"{where}: missing or malformed entry ({exc})") from None
        if win.side not in SIDES or win.limit not in LIMITS or win.hours < 0:
            raise CatalogError(f"{where}: side must be one of {SIDES}, limit one of {LIMITS}, hours >= 0")
        return win

    def resolve(self, code: str, system: str = "") -> Test | None:
        """The test for a code: LOINC when `system` says so (or is empty), else a local synonym."""
        code = code.strip()
        system = system.strip().upper()
        if system in LOINC_SYSTEMS or not system:
            found = self._by_loinc.get(code)
            if found or system:
                return found
        return self._by_synonym.get(code.upper())

    def status_kind(self, status: str) -> str | None:
        """final | preliminary | withdraw for an HL7 result status (labs.toml [hl7]); None if not listed."""
        for kind in ("final", "preliminary", "withdraw"):
            if status in self.hl7.get(kind, ()):
                return kind
        return None

    def test(self, key_or_code: str) -> Test | None:
        """A test by its key, LOINC code or synonym (for CSV files and the command line)."""
        return self.tests.get(key_or_code.strip().lower()) or self.resolve(key_or_code)

    def factor(self, test: Test, unit: str) -> float:
        """The factor from `unit` into the test's canonical unit; LabValueError for an unknown unit."""
        factor = test.units.get(unit_spelling(unit))
        if factor is None:
            known = ", ".join(sorted(test.units))
            raise LabValueError(f"unknown unit {unit[:30]!r} for {test.key} (known: {known})", "unit")
        return factor

    def normalise(self, test: Test, value: float, unit: str) -> float:
        """`value` in `unit` converted to the test's canonical unit, checked for plausibility."""
        canonical = value * self.factor(test, unit)
        low, high = test.plausible
        if not low <= canonical <= high:
            raise LabValueError(
                f"{test.key} {value:g} {unit} = {canonical:g} {test.unit} is outside the plausible range "
                f"{low:g}-{high:g} {test.unit}", "value"
            )
        return canonical

    def window(self, paper: str, test: str) -> Window:
        """The window paper `paper` ("000", "001", ...) uses for `test`; the site default when unpublished."""
        found = self.windows.get((paper, test))
        if found:
            return found
        return Window(paper, test, self.default.hours, self.default.side, self.default.limit, False,
                      "", "paper not listed in labs.toml")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(data_dir: str | Path | None = None) -> Catalog:
    """The packaged catalog, overlaid with `<data_dir>/labs.toml` when that file exists."""
    data = tomllib.loads(resources.files("hccnode").joinpath("data", "labs.toml").read_text(encoding="utf-8"))
    if data_dir is not None:
        site = Path(data_dir) / "labs.toml"
        if site.exists():
            try:
                data = _merge(data, tomllib.loads(site.read_text(encoding="utf-8")))
            except tomllib.TOMLDecodeError as exc:
                raise CatalogError(f"{site}: not valid TOML: {exc}") from None
    return Catalog(data)
