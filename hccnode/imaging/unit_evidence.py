"""Evidence for the unit of a quantitative map's stored values, shared by the ADC map
(hccnode.imaging.adc_unit) and the iodine map (hccnode.imaging.iodine_unit).

- The map's Real World Value Mapping (0040,9096), PS3.3 C.7.6.16.2.11: a UCUM unit in Measurement
  Units Code Sequence with Real World Value Slope / Intercept, at the top level or, for an enhanced
  image, in the shared or the first frame's functional groups (`rwvm_unit`).
- A vendor convention: an entry of a packaged TOML table matched on Manufacturer, Manufacturer's
  Model Name and Software Versions, each entry with its source (`Convention`, `parse_conventions`).
What each unit means, and how a claim is checked against the values, is the map's own module.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset


@dataclass(frozen=True)
class HeaderUnit:
    """The unit a header states: value in `unit` = volume value * slope + intercept (volume values
    are stored values after Rescale Slope / Intercept). `source` names the attribute that said so."""

    unit: str
    slope: float = 1.0
    intercept: float = 0.0
    source: str = "Real World Value Mapping"


def number(item: Dataset, keyword: str, default: float) -> float:
    value = item.get(keyword)
    try:
        return float(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def rwvm_unit(ds: Dataset, known: Callable[[str], str | None]) -> HeaderUnit | None:
    """The first Real World Value Mapping item whose UCUM unit `known` accepts (it returns the
    unit's key, or None), with its linear mapping from volume values."""
    items = list(ds.get("RealWorldValueMappingSequence") or [])
    groups = list(ds.get("SharedFunctionalGroupsSequence") or [])
    groups += list(ds.get("PerFrameFunctionalGroupsSequence") or [])[:1]
    for group in groups:
        items += list(group.get("RealWorldValueMappingSequence") or [])
    rs, ri = number(ds, "RescaleSlope", 1.0) or 1.0, number(ds, "RescaleIntercept", 0.0)
    for item in items:
        for code in item.get("MeasurementUnitsCodeSequence") or []:
            unit = known(str(code.get("CodeValue", "")).strip())
            if unit is not None:
                ws, wi = number(item, "RealWorldValueSlope", 1.0), number(item, "RealWorldValueIntercept", 0.0)
                # volume v = stored * rs + ri and value = stored * ws + wi, so value = v * ws/rs + (wi - ri * ws/rs)
                return HeaderUnit(unit, ws / rs, wi - ri * ws / rs)
    return None


@dataclass(frozen=True)
class Convention:
    """One vendor convention: the unit of a Manufacturer's (model's, software's) maps and its source."""

    manufacturer: re.Pattern
    unit: str
    source: str
    model: re.Pattern | None = None
    software: re.Pattern | None = None

    def matches(self, manufacturer: str, model: str, software: str) -> bool:
        return bool(self.manufacturer.search(manufacturer)
                    and (self.model is None or self.model.search(model))
                    and (self.software is None or self.software.search(software)))


def parse_conventions(text: str, parse_unit: Callable[[str], str], table: str) -> list[Convention]:
    """The [[convention]] entries of a TOML text (format in hccnode/data/adc_units.toml). ValueError,
    naming the entry of `table`, for an entry without a manufacturer, a known unit or a source."""
    out = []
    for i, entry in enumerate(tomllib.loads(text).get("convention", []), start=1):
        where = f"{table} convention {i}"
        if not str(entry.get("source", "")).strip():
            raise ValueError(f"{where}: no source; a convention without a source is not used")
        if not str(entry.get("manufacturer", "")).strip():
            raise ValueError(f"{where}: no manufacturer pattern")
        try:
            unit = parse_unit(entry.get("unit", ""))
            pats = {k: re.compile(entry[k], re.IGNORECASE) if entry.get(k) else None
                    for k in ("manufacturer", "model", "software")}
        except (ValueError, re.error) as exc:
            raise ValueError(f"{where}: {exc}") from None
        out.append(Convention(pats["manufacturer"], unit, " ".join(str(entry["source"]).split()),
                              pats["model"], pats["software"]))
    return out


def find_convention(table: tuple[Convention, ...], manufacturer: str, model: str = "",
                    software: str = "") -> Convention | None:
    """The first convention of `table` matching the header's Manufacturer, model and software."""
    for c in table:
        if c.matches(manufacturer or "", model or "", software or ""):
            return c
    return None
