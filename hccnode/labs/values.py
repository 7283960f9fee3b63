"""Parsing result values and times, shared by the HL7 and CSV readers.

Values: a plain decimal is a number; "<5", ">= 1000" and the like are censored results, kept as
text with their comparator and never turned into a number. Times: HL7 DTM/TS
(YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]) and ISO 8601. A time without a UTC offset is taken
in the node's local time zone, as DICOM times without TimezoneOffsetFromUTC are. Each time keeps
its precision: "20240105" is the whole day, not midnight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_CENSORED = re.compile(r"^(<=|>=|<|>|≤|≥)\s*([+-]?(\d+(\.\d*)?|\.\d+))$")
_UNICODE_CMP = {"≤": "<=", "≥": ">="}


@dataclass(frozen=True)
class Value:
    number: float | None  # None when censored
    comparator: str | None  # "<", "<=", ">", ">=" for a censored result
    text: str  # as received


def parse_value(text: str) -> Value:
    """A numeric result or a censored one ("<5"); ValueError naming the text otherwise."""
    t = text.strip()
    if _NUMBER.match(t):
        n = float(t)
        if math.isfinite(n):
            return Value(n, None, t)
    m = _CENSORED.match(t)
    if m:
        return Value(None, _UNICODE_CMP.get(m[1], m[1]), t)
    raise ValueError(f"{t[:40]!r} is not a number or a censored value such as '<5'")


@dataclass(frozen=True)
class Time:
    start: datetime  # timezone-aware
    precision: timedelta  # length of the period the text names (1 s for a full time)
    text: str  # as received

    @property
    def end(self) -> datetime:
        return self.start + self.precision


_HL7_TS = re.compile(
    r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$"
)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.astimezone()  # naive: the node's local time zone


def parse_hl7_time(text: str) -> Time:
    """HL7 v2 DTM / TS (first component only); ValueError naming the text otherwise."""
    t = text.strip()
    m = _HL7_TS.match(t)
    if not m:
        raise ValueError(f"{t[:40]!r} is not an HL7 time (YYYYMMDDHHMM[SS][+ZZZZ])")
    year, month, day, hour, minute, second, frac, offset = m.groups()
    parts = [year, month, day, hour, minute, second]
    given = sum(p is not None for p in parts)
    if any(p is None for p in parts[:given]) or (frac and second is None):
        raise ValueError(f"{t!r} is not an HL7 time")
    precision = [None, timedelta(days=366), timedelta(days=31), timedelta(days=1), timedelta(hours=1),
                 timedelta(minutes=1), timedelta(seconds=1)][given]
    tz = None
    if offset:
        sign = 1 if offset[0] == "+" else -1
        hh, mm = int(offset[1:3]), int(offset[3:5])
        if hh > 23 or mm > 59:
            raise ValueError(f"{t!r}: bad UTC offset")
        tz = timezone(sign * timedelta(hours=hh, minutes=mm))
    try:
        dt = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                      int(second or 0), int((frac or "0").ljust(6, "0")[:6]), tzinfo=tz)
    except ValueError:
        raise ValueError(f"{t!r} is not a valid date and time") from None
    if given < 3:  # a month or a year is no use for matching to a scan
        raise ValueError(f"{t!r} gives no day")
    return Time(_aware(dt), precision, t)


def parse_iso_time(text: str) -> Time:
    """ISO 8601 date or date-time (as Python reads it); a date alone is the whole day."""
    t = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
            return Time(_aware(datetime.fromisoformat(t)), timedelta(days=1), t)
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"{t[:40]!r} is not an ISO 8601 date-time (e.g. 2024-03-05T08:30 or 2024-03-05T08:30+01:00)") from None
    precision = timedelta(seconds=1) if re.search(r"T\d{2}:\d{2}:\d{2}", t) else timedelta(minutes=1)
    if not re.search(r"[T ]\d{2}:\d{2}", t):
        precision = timedelta(hours=1)
    return Time(_aware(dt), precision, t)


def as_aware(dt: datetime) -> datetime:
    """A scan or query time made timezone-aware with the same rule as stored results."""
    return _aware(dt)
