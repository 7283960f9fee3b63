"""One plain record per series, built from the headers of its instances (pydicom datasets).

The phase classifier works on these records only, never on files. `header_from_datasets()` reads
classic single-frame and enhanced multi-frame objects (shared and per-frame functional groups),
the DICOM multi-energy CT attributes, and the standard and private diffusion b-value conventions.
Times are seconds; "seconds of day" values carry the acquisition date when it is known so that
an examination across midnight still orders correctly.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataset import Dataset
from pydicom.uid import UID

from hccnode.imaging.phase_rules import BValueTag, normalise

_KEV = re.compile(r"\b(\d{2,3}) ?kev\b")


@dataclass
class SeriesHeader:
    """What the classifier needs to know about one series (all optional except the UIDs)."""

    series_uid: str
    study_uid: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    protocol_name: str = ""
    image_comments: str = ""
    manufacturer: str = ""
    sop_class: str = ""
    image_type: tuple[str, ...] = ()
    sequence_name: str = ""
    scanning_sequence: tuple[str, ...] = ()    # Scanning Sequence (0018,0020): SE, IR, GR, EP, RM
    contrast_agent: str = ""
    contrast_route: str = ""
    contrast_start_s: float | None = None      # Contrast/Bolus Start Time, seconds (dated when possible)
    contrast_phase: tuple[str, ...] = ()       # Contrast/Bolus Agent Phase values
    acquisition_s: float | None = None         # earliest acquisition time, seconds (dated when possible)
    multienergy: bool = False
    kev: float | None = None                   # Monoenergetic Energy Equivalent
    materials: tuple[str, ...] = ()            # Material Code Sequence meanings and SCHEME:VALUE
    b_values: tuple[float, ...] = ()           # distinct b-values, s/mm2
    b_value_sources: tuple[str, ...] = ()
    echo_time: float | None = None             # ms
    repetition_time: float | None = None       # ms
    instance_count: int = 0
    frame_count: int = 0
    instance_range: tuple[int, int] | None = None   # smallest and largest Instance Number

    @property
    def text(self) -> str:
        return " ".join(t for t in (self.series_description, self.protocol_name, self.image_comments) if t)

    @property
    def text_kev(self) -> float | None:
        m = _KEV.search(normalise(self.text))
        return float(m.group(1)) if m else None

    def record(self) -> dict[str, Any]:
        """The field values the rules see (names as in the rules file)."""
        return {
            "modality": self.modality, "manufacturer": self.manufacturer, "sop_class": self.sop_class,
            "series_description": self.series_description, "protocol_name": self.protocol_name,
            "text": self.text, "image_type": self.image_type, "sequence_name": self.sequence_name,
            "scanning_sequence": self.scanning_sequence,
            "contrast_agent": self.contrast_agent, "contrast_route": self.contrast_route,
            "contrast_start": True if self.contrast_start_s is not None else None,
            "contrast_phase": self.contrast_phase, "multienergy": True if self.multienergy else None,
            "kev": self.kev, "text_kev": self.text_kev, "materials": self.materials,
            "b_max": max(self.b_values) if self.b_values else None,
            "echo_time": self.echo_time, "repetition_time": self.repetition_time,
        }


def parse_time(tm: Any, da: Any = None) -> float | None:
    """DICOM TM (and optional DA) to seconds; with a date, seconds since 0001-01-01."""
    if tm is None:
        return None
    s = str(tm).strip()
    m = re.match(r"^(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?(\.\d+)?$", s)
    if not m:
        return None
    h, mi, se = int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0)
    if h > 23 or mi > 59 or se > 60:
        return None
    secs = h * 3600 + mi * 60 + se + (float(m.group(4)) if m.group(4) else 0.0)
    day = parse_date(da)
    return secs + day * 86400.0 if day is not None else secs


def parse_date(da: Any) -> int | None:
    if da is None:
        return None
    s = str(da).strip().replace(".", "").replace("-", "")
    try:
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8])).toordinal()
    except (ValueError, IndexError):
        return None


def parse_datetime(v: Any) -> float | None:
    """DICOM DT (YYYYMMDDHHMMSS.FFFFFF&ZZXX) to dated seconds."""
    if v is None:
        return None
    s = re.split(r"[+-]", str(v).strip())[0]
    if len(s) < 8:
        return None
    return parse_time(s[8:] or "000000", s[:8])


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        v = ds.get(keyword)
    except Exception:  # a malformed element must not stop classification
        return None
    return None if v is None or v == "" else v


def _str(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        return "\\".join(str(x) for x in v)
    return str(v).strip()


def _values(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [x for x in v.split("\\") if x]
    try:
        return [str(x) for x in v]
    except TypeError:
        return [str(v)]


def _walk(ds: Dataset, depth: int = 0, parsed: dict | None = None) -> Iterable[Dataset]:
    """`ds` and every item of every sequence below it (functional groups, multi-energy sequences).

    `parsed` (one dict per series) keeps each sequence's items by its raw bytes: the instances
    of a series mostly repeat the same sequences, which are then parsed once."""
    yield ds
    if depth > 6:
        return
    for tag in list(ds.keys()):
        # The raw element's VR decides; converting every value just to look at it costs most of
        # the header time of a large series. Implicit VR raw elements carry no VR: convert those.
        # Deferred elements (pixel data, large blobs) stay in the file: their VR is the raw one
        # or, in implicit VR, the dictionary's.
        try:
            raw = ds.get_item(tag, keep_deferred=True)
            vr = raw.VR
            if vr is None:
                vr = (dictionary_VR(tag) if dictionary_has_tag(tag) else None) if raw.value is None else ds[tag].VR
        except Exception:  # a malformed element must not stop classification
            continue
        if vr == "SQ":
            key = (int(tag), raw.value) if parsed is not None and isinstance(raw.value, bytes) else None
            items = parsed.get(key) if key is not None else None
            if items is None:
                try:
                    items = list(_walk_items(ds[tag].value, depth, parsed))
                except Exception:
                    continue
                if key is not None:
                    parsed[key] = items
            yield from items


def _walk_items(items, depth: int, parsed: dict | None) -> Iterable[Dataset]:
    for item in items:
        yield from _walk(item, depth + 1, parsed)


def _frame_groups(ds: Dataset) -> list[Dataset]:
    """Shared and per-frame functional group items, if any (enhanced multi-frame objects)."""
    out = []
    for kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = _get(ds, kw)
        if seq:
            out.extend(seq)
    return out


def _b_values(ds: Dataset, tags: Sequence[BValueTag], items: Sequence[Dataset] | None = None) -> tuple[list[float], list[str]]:
    found: list[float] = []
    sources: list[str] = []
    for item in _walk(ds) if items is None else items:
        v = _get(item, "DiffusionBValue")
        if v is not None:
            try:
                found.append(float(v))
                if "standard (0018,9087)" not in sources:
                    sources.append("standard (0018,9087)")
            except (TypeError, ValueError):
                pass
    if found:
        return found, sources
    if str(_get(ds, "Modality") or "MR").upper() != "MR":
        return [], []  # the private conventions below are MR ones; looking them up is costly
    for t in tags:
        try:
            elem = ds.private_block(t.group, t.creator)[t.element]
        except (KeyError, ValueError):
            continue
        b = _first_number(elem.value)
        if b is None:
            continue
        if t.modulo and b >= t.modulo:
            b = b % t.modulo
        return [b], [t.name]
    seq = normalise(_str(_get(ds, "SequenceName")))
    m = re.search(r"\bep ?b ?(\d+)", seq)
    if m:
        return [float(m.group(1))], ["SequenceName"]
    return [], []


def _first_number(v: Any) -> float | None:
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace").split("\\")[0]
    if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
        v = v[0] if len(v) else None
    try:
        return float(str(v).strip().strip("\x00"))
    except (TypeError, ValueError):
        return None


def _acq_seconds(ds: Dataset) -> float | None:
    """Earliest acquisition time of one instance (frame times for enhanced objects).

    Content Time is used only for ORIGINAL images: derived series (DECT maps) get a content time
    when they are computed, which says nothing about the contrast phase.
    """
    times = []
    for g in _frame_groups(ds):
        for fc in _get(g, "FrameContentSequence") or []:
            t = parse_datetime(_get(fc, "FrameAcquisitionDateTime"))
            if t is not None:
                times.append(t)
    if times:
        return min(times)
    t = parse_datetime(_get(ds, "AcquisitionDateTime"))
    if t is not None:
        return t
    date = _get(ds, "AcquisitionDate") or _get(ds, "SeriesDate") or _get(ds, "StudyDate")
    t = parse_time(_get(ds, "AcquisitionTime"), date)
    if t is not None:
        return t
    itype = [x.upper() for x in _values(_get(ds, "ImageType"))]
    if itype[:1] == ["ORIGINAL"]:
        return parse_time(_get(ds, "ContentTime"), _get(ds, "ContentDate") or date)
    return None


def header_from_datasets(datasets: Sequence[Dataset], b_value_tags: Sequence[BValueTag] = ()) -> SeriesHeader:
    """Merge the headers of one series' instances into a SeriesHeader.

    Text fields come from the first instance that has them; image types, contrast phases,
    materials and b-values are collected over all instances (and frames); the acquisition time is
    the earliest found.
    """
    if not datasets:
        raise ValueError("a series needs at least one instance header")
    first = datasets[0]
    h = SeriesHeader(series_uid=_str(_get(first, "SeriesInstanceUID")), study_uid=_str(_get(first, "StudyInstanceUID")))
    image_type: list[str] = []
    scanning: list[str] = []
    phases: list[str] = []
    materials: list[str] = []
    b_values: list[float] = []
    b_sources: list[str] = []
    acq: list[float] = []
    parsed: dict = {}  # sequences parsed once per series (see _walk)
    frames = 0
    numbers: list[int] = []
    for ds in datasets:
        number = _int(_get(ds, "InstanceNumber"))
        if number is not None:
            numbers.append(number)
        for attr, kw in (("modality", "Modality"), ("series_description", "SeriesDescription"),
                         ("protocol_name", "ProtocolName"), ("image_comments", "ImageComments"),
                         ("manufacturer", "Manufacturer"), ("sequence_name", "SequenceName"),
                         ("contrast_agent", "ContrastBolusAgent"), ("contrast_route", "ContrastBolusRoute")):
            if not getattr(h, attr):
                setattr(h, attr, _str(_get(ds, kw)))
        if h.series_number is None:
            h.series_number = _int(_get(ds, "SeriesNumber"))
        if not h.sop_class and _get(ds, "SOPClassUID"):
            uid = UID(str(_get(ds, "SOPClassUID")))
            h.sop_class = uid.keyword or str(uid)
        date = _get(ds, "AcquisitionDate") or _get(ds, "SeriesDate") or _get(ds, "StudyDate")
        if h.contrast_start_s is None:
            h.contrast_start_s = parse_time(_get(ds, "ContrastBolusStartTime"), date)
        t = _acq_seconds(ds)
        if t is not None:
            acq.append(t)
        items = list(_walk(ds, parsed=parsed))  # walked once per instance, used below three times
        for item in items:
            for v in _values(_get(item, "ImageType")) + _values(_get(item, "FrameType")):
                if v.strip().upper() not in image_type:
                    image_type.append(v.strip().upper())
            for v in _values(_get(item, "ScanningSequence")):
                if v.strip().upper() not in scanning:
                    scanning.append(v.strip().upper())
            for v in _values(_get(item, "ContrastBolusAgentPhase")):
                if v.upper() not in phases:
                    phases.append(v.upper())
            if str(_get(item, "MultienergyCTAcquisition") or "").upper() == "YES":
                h.multienergy = True
            if h.kev is None:
                h.kev = _float(_get(item, "MonoenergeticEnergyEquivalent"))
            for code in _get(item, "MaterialCodeSequence") or []:
                # The meaning may be localised; the coded value (CID 300, e.g. SCT:44588005 iodine) is not.
                value = _str(_get(code, "CodeValue"))
                scheme = _str(_get(code, "CodingSchemeDesignator"))
                for m in (_str(_get(code, "CodeMeaning")), f"{scheme}:{value}" if scheme and value else ""):
                    if m and m not in materials:
                        materials.append(m)
        bv, src = _b_values(ds, b_value_tags, items)
        b_values.extend(bv)
        b_sources.extend(s for s in src if s not in b_sources)
        if h.echo_time is None:
            h.echo_time = _float(_get(ds, "EchoTime")) or _float_from_groups(items, "EffectiveEchoTime")
        if h.repetition_time is None:
            h.repetition_time = _float(_get(ds, "RepetitionTime"))
        frames += _int(_get(ds, "NumberOfFrames")) or 1
    if h.contrast_start_s is not None and acq and h.contrast_start_s < 86400 <= min(acq):
        # Bolus start without a date, acquisition with one: compare within the day.
        acq = [a % 86400 for a in acq]
    h.image_type = tuple(image_type)
    h.scanning_sequence = tuple(scanning)
    h.contrast_phase = tuple(phases)
    h.materials = tuple(materials)
    h.b_values = tuple(sorted(set(round(b, 1) for b in b_values)))
    h.b_value_sources = tuple(b_sources)
    h.acquisition_s = min(acq) if acq else None
    h.instance_count = len(datasets)
    h.instance_range = (min(numbers), max(numbers)) if numbers else None
    h.frame_count = frames
    return h


def _int(v: Any) -> int | None:
    try:
        return int(float(v)) if v is not None else None
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _float_from_groups(items: Iterable[Dataset], keyword: str) -> float | None:
    for item in items:
        v = _float(_get(item, keyword))
        if v is not None:
            return v
    return None
