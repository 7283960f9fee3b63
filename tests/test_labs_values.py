"""Result values and times: numbers, censored values, HL7 and ISO times (with property tests)."""

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, strategies as st

from hccnode.labs.values import parse_hl7_time, parse_iso_time, parse_value


@pytest.mark.parametrize("text,number,cmp", [("42", 42.0, None), (" 0.42 ", 0.42, None), ("-1.5", -1.5, None),
                                             (".5", 0.5, None), ("<5", None, "<"), ("< 0.5", None, "<"),
                                             (">=1000", None, ">="), ("≤3", None, "<="), (">2000", None, ">")])
def test_parse_value(text, number, cmp):
    v = parse_value(text)
    assert (v.number, v.comparator, v.text) == (number, cmp, text.strip())


@pytest.mark.parametrize("text", ["", "abc", "1,5", "5-10", "nan", "inf", "1e400", "<", "<>5", "POS"])
def test_parse_value_rejects(text):
    with pytest.raises(ValueError):
        parse_value(text)


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_parse_value_round_trips_decimals(x):
    text = f"{x:.6f}"
    assert parse_value(text).number == pytest.approx(float(text))


@given(st.text(max_size=40))
def test_parse_value_only_raises_value_error(text):
    try:
        v = parse_value(text)
    except ValueError:
        return
    assert (v.number is None) != (v.comparator is None)


def test_hl7_time_with_offset_and_precision():
    t = parse_hl7_time("20240105081530+0100")
    assert t.start == datetime(2024, 1, 5, 7, 15, 30, tzinfo=timezone.utc)
    assert t.precision == timedelta(seconds=1)
    assert parse_hl7_time("202401050815").precision == timedelta(minutes=1)
    day = parse_hl7_time("20240105")
    assert day.precision == timedelta(days=1) and day.end - day.start == timedelta(days=1)
    assert parse_hl7_time("20240105081530.25-0500").start.microsecond == 250000


def test_hl7_time_without_offset_is_local_time():
    t = parse_hl7_time("20240105081500")
    assert t.start == datetime(2024, 1, 5, 8, 15).astimezone()


@pytest.mark.parametrize("text", ["", "2024", "202401", "20241305", "20240230", "2024010", "20240105+2500",
                                  "2024-01-05", "20240105081500.1234567", "x20240105"])
def test_hl7_time_rejects(text):
    with pytest.raises(ValueError):
        parse_hl7_time(text)


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
       st.integers(min_value=-12 * 60, max_value=14 * 60))
def test_hl7_time_round_trip(dt, offset_min):
    dt = dt.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=offset_min)))
    sign = "+" if offset_min >= 0 else "-"
    text = dt.strftime("%Y%m%d%H%M%S") + f"{sign}{abs(offset_min) // 60:02d}{abs(offset_min) % 60:02d}"
    assert parse_hl7_time(text).start == dt


@given(st.text(max_size=30))
def test_hl7_time_only_raises_value_error(text):
    try:
        parse_hl7_time(text)
    except ValueError:
        pass


def test_iso_times():
    assert parse_iso_time("2024-01-05T08:15:30Z").start == datetime(2024, 1, 5, 8, 15, 30, tzinfo=timezone.utc)
    assert parse_iso_time("2024-01-05T08:15").precision == timedelta(minutes=1)
    assert parse_iso_time("2024-01-05").precision == timedelta(days=1)
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_iso_time("05/01/2024")
