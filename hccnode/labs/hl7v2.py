"""HL7 v2 ORU^R01 lab results: parse into `Result`s, store them, build the ACK.

`handle(store, catalog, raw)` is the whole application side of the MLLP listener, with no
network: it always returns ACK bytes, keeps the raw message in `labs_raw` (whatever it
contains), and stores a message's results in one transaction or not at all.

Acknowledgement codes (HL7 v2.5 chapter 2, table 0008):
  AA  stored (or a byte-identical resend of a stored message: answered again, stored once);
  AR  rejected at message level, resending it unchanged cannot help: not decodable, no MSH,
      not ORU^R01 (ERR-3 200/201), unsupported version (203), no control ID;
  AE  application error in the content: a result without patient ID or time, an unknown unit or
      unreadable value for a known test, an implausible value, or an internal error (207).
The reason goes in MSA-3 (80 characters) and one ERR segment per problem (ERR-2 location,
ERR-3 HL7 table 0357 code, ERR-4 severity E, ERR-8 the full text). Reasons never carry patient
identifiers: they end up in logs and in the sender's interface engine.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import hl7

from hccnode import log
from hccnode.labs.catalog import Catalog, LabValueError
from hccnode.store.labs import (FINAL, PRELIMINARY, Result, Stored, find_duplicate, raw_messages, save_raw, set_raw_outcome,
                                store_results)
from hccnode.labs.values import parse_hl7_time, parse_value
from hccnode.store.db import Store

# HL7 table 0357 (message error condition codes) used here.
SEGMENT_SEQUENCE, REQUIRED_MISSING, DATA_TYPE, TABLE_VALUE = 100, 101, 102, 103
UNSUPPORTED_TYPE, UNSUPPORTED_EVENT, UNSUPPORTED_VERSION, INTERNAL = 200, 201, 203, 207
_ERROR_TEXT = {100: "Segment sequence error", 101: "Required field missing", 102: "Data type error",
               103: "Table value not found", 200: "Unsupported message type", 201: "Unsupported event code",
               203: "Unsupported version id", 207: "Application internal error"}
MAX_ERR_SEGMENTS = 20


@dataclass(frozen=True)
class Problem:
    code: int  # HL7 table 0357
    text: str
    segment: str = ""
    sequence: int = 0  # 1-based occurrence of the segment in the message
    field: int = 0


class Rejected(Exception):
    def __init__(self, ack_code: str, problems: list[Problem]):
        super().__init__(problems[0].text)
        self.ack_code = ack_code
        self.problems = problems


@dataclass
class Header:
    """What the ACK needs from MSH, read without trusting the rest of the message."""

    sending_app: str = ""
    sending_facility: str = ""
    receiving_app: str = ""
    receiving_facility: str = ""
    message_type: str = ""  # MSH-9 as "ORU^R01"
    control_id: str = ""
    processing_id: str = ""
    version: str = ""


@dataclass
class Parsed:
    header: Header
    results: list[Result] = field(default_factory=list)


# --- decoding and header ------------------------------------------------------------------------

_CHARSETS = {"": "utf-8", "ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8",
             "8859/1": "latin-1", "8859/15": "iso8859-15", "8859/2": "iso8859-2"}


def decode(raw: bytes) -> str:
    """Message text in the character set MSH-18 names (UTF-8 when it names none), segments split by CR."""
    msh_line = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    charset = ""
    if msh_line.startswith(b"MSH") and len(msh_line) > 3:
        fields = msh_line.split(msh_line[3:4])
        if len(fields) > 17:
            charset = fields[17].split(b"^")[0].decode("ascii", "replace").strip().upper()
    codec = _CHARSETS.get(charset)
    if codec is None:
        raise Rejected("AR", [Problem(TABLE_VALUE, f"MSH-18 character set {charset[:20]!r} is not supported",
                                      "MSH", 1, 18)])
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        raise Rejected("AR", [Problem(DATA_TYPE, f"message is not valid {codec} (MSH-18 {charset or 'empty'})")]) from None
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r\x00 \t")


def read_header(text: str) -> Header:
    """MSH fields by plain splitting, so an ACK can echo them even when the rest does not parse."""
    h = Header()
    if not text.startswith("MSH") or len(text) < 8:
        return h
    sep = text[3]
    comp = text[4] if text[4] != sep else "^"
    f = text.split("\r", 1)[0].split(sep)
    get = lambda i: f[i - 1] if i - 1 < len(f) else ""  # noqa: E731  (MSH-1 is the separator itself)
    h.sending_app, h.sending_facility = get(3).split(comp)[0], get(4).split(comp)[0]
    h.receiving_app, h.receiving_facility = get(5).split(comp)[0], get(6).split(comp)[0]
    h.message_type = "^".join(get(9).split(comp)[:2])
    h.control_id = get(10)
    h.processing_id = get(11).split(comp)[0]
    h.version = get(12).split(comp)[0]
    return h


# --- parsing ------------------------------------------------------------------------------------


def _get(seg, fld: int, comp: int = 1, rep: int = 1, sub: int = 1) -> str:
    try:
        return str(seg.extract_field(1, fld, rep, comp, sub)).strip()
    except Exception:  # a shorter tree than asked for: the value is absent
        return ""


def _repetitions(seg, fld: int) -> int:
    try:
        f = seg(fld)
    except Exception:
        return 0
    return len(f) if f and isinstance(f[0], hl7.Repetition) else 1


def _patient(seg, catalog: Catalog) -> tuple[str, str | None]:
    """PID-3 (CX): the identifier of the preferred type, and its assigning authority (CX-4 HD)."""
    preferred = [t.upper() for t in catalog.hl7.get("identifier_types", [])]
    reps = [(_get(seg, 3, 1, i), _get(seg, 3, 5, i).upper(), i) for i in range(1, _repetitions(seg, 3) + 1)]
    reps = [r for r in reps if r[0]]
    if not reps:
        return "", None
    reps.sort(key=lambda r: preferred.index(r[1]) if r[1] in preferred else len(preferred))
    i = reps[0][2]
    issuer = _get(seg, 3, 4, i, 1) or _get(seg, 3, 4, i, 2)
    return reps[0][0], issuer or None


def parse(text: str, catalog: Catalog) -> Parsed:
    """An ORU^R01 message as results; `Rejected` with every problem found otherwise."""
    header = read_header(text)
    if not text.startswith("MSH") or len(text) < 8:
        raise Rejected("AR", [Problem(SEGMENT_SEQUENCE, "message does not start with an MSH segment")])
    mtype, _, event = header.message_type.partition("^")
    if mtype != "ORU":
        raise Rejected("AR", [Problem(UNSUPPORTED_TYPE, f"message type {mtype[:10]!r} is not supported (only ORU^R01)", "MSH", 1, 9)])
    if event != "R01":
        raise Rejected("AR", [Problem(UNSUPPORTED_EVENT, f"event {event[:10]!r} is not supported (only ORU^R01)", "MSH", 1, 9)])
    if not header.version.startswith("2."):
        raise Rejected("AR", [Problem(UNSUPPORTED_VERSION, f"HL7 version {header.version[:10]!r} is not 2.x", "MSH", 1, 12)])
    if not header.control_id:
        raise Rejected("AR", [Problem(REQUIRED_MISSING, "MSH-10 message control ID is empty", "MSH", 1, 10)])
    try:
        msg = hl7.parse(text)
    except Exception:
        raise Rejected("AR", [Problem(DATA_TYPE, "message cannot be parsed as HL7 v2")]) from None

    out = Parsed(header)
    problems: list[Problem] = []
    pid: tuple[str, str | None] | None = None
    obr_time = ""
    counts: dict[str, int] = {}
    for seg in msg:
        name = str(seg[0][0]) if seg and seg[0] else ""
        counts[name] = n = counts.get(name, 0) + 1
        if name == "PID":
            pid = _patient(seg, catalog)
            if not pid[0]:
                problems.append(Problem(REQUIRED_MISSING, f"PID {n}: PID-3 patient identifier is empty", "PID", n, 3))
        elif name == "OBR":
            obr_time = _get(seg, 7)
        elif name == "OBX":
            if pid is None:
                problems.append(Problem(SEGMENT_SEQUENCE, f"OBX {n} comes before any PID segment", "OBX", n))
                continue
            if not pid[0]:
                continue  # already reported on the PID
            try:
                out.results.append(_result(seg, n, pid, obr_time, catalog))
            except Rejected as exc:
                problems.extend(exc.problems)
    if not out.results and not problems:
        problems.append(Problem(REQUIRED_MISSING, "message carries no OBX result", "OBX", 1))
    if problems:
        raise Rejected("AE", problems)
    return out


def _result(seg, n: int, pid: tuple[str, str | None], obr_time: str, catalog: Catalog) -> Result:
    where = f"OBX {n}"
    code, text, system = _get(seg, 3, 1), _get(seg, 3, 2), _get(seg, 3, 3)
    test = catalog.resolve(code, system) if code else None
    if test is None and _get(seg, 3, 4):
        alt = (_get(seg, 3, 4), _get(seg, 3, 5), _get(seg, 3, 6))
        if catalog.resolve(alt[0], alt[2]):
            code, text, system = alt
            test = catalog.resolve(code, system)
    if not code:
        raise Rejected("AE", [Problem(REQUIRED_MISSING, f"{where}: OBX-3 observation identifier is empty", "OBX", n, 3)])
    label = f"{where} ({test.key if test else code[:20]})"
    status = _get(seg, 11)
    if not status:
        raise Rejected("AE", [Problem(REQUIRED_MISSING, f"{label}: OBX-11 result status is empty", "OBX", n, 11)])
    kind = catalog.status_kind(status) or "other"  # e.g. I (in process): stored, never used
    when_text = _get(seg, 14) or obr_time
    if not when_text:
        raise Rejected("AE", [Problem(REQUIRED_MISSING, f"{label}: no observation time (OBX-14 and OBR-7 empty)", "OBX", n, 14)])
    try:
        when = parse_hl7_time(when_text)
    except ValueError as exc:
        raise Rejected("AE", [Problem(DATA_TYPE, f"{label}: observation time: {exc}", "OBX", n, 14)]) from None
    value_type = _get(seg, 2).upper()
    raw_value = str(seg(5)).strip() if len(seg) > 5 else ""
    unit_text = _get(seg, 6, 1) or _get(seg, 6, 2)
    number = comparator = unit = None
    if test is not None and kind in (FINAL, PRELIMINARY):
        try:
            v = parse_value(_structured_numeric(seg) if value_type == "SN" else _get(seg, 5))
            number, comparator = v.number, v.comparator
            if number is not None:
                number = catalog.normalise(test, number, unit_text)
                unit = test.unit
            else:
                catalog.factor(test, unit_text)  # a censored value still needs a known unit
        except LabValueError as exc:
            unit_err = exc.part == "unit"
            raise Rejected("AE", [Problem(TABLE_VALUE if unit_err else DATA_TYPE, f"{label}: {exc}", "OBX", n,
                                          6 if unit_err else 5)]) from None
        except ValueError as exc:
            raise Rejected("AE", [Problem(DATA_TYPE, f"{label}: OBX-5 value {exc}", "OBX", n, 5)]) from None
    return Result(
        patient_id=pid[0], issuer=pid[1], test=test.key if test else None, code=code, code_system=system,
        code_text=text, value=number, unit=unit, value_text=raw_value, unit_text=unit_text,
        comparator=comparator, status=status, kind=kind, observed=when_text, observed_start=when.start,
        observed_end=when.end, reference_range=_get(seg, 7), abnormal_flag=_get(seg, 8), source_ref=_get(seg, 1),
    )


def _structured_numeric(seg) -> str:
    """SN (comparator ^ number ^ separator ^ number): "<^5" -> "<5"; a ratio or range is not a number."""
    cmp_, num, sep, num2 = (_get(seg, 5, i) for i in (1, 2, 3, 4))
    if sep or num2:
        raise ValueError(f"{(cmp_ + num + sep + num2)[:40]!r} is a range or ratio, not a single number")
    return cmp_ + num


# --- ACK ----------------------------------------------------------------------------------------


def escape(value: str) -> str:
    """Escape the standard delimiters for use in an ACK built with |^~\\&."""
    out = value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    return out.replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", " ").replace("\n", " ")


def build_ack(header: Header, code: str, problems: list[Problem] = (), text: str = "") -> bytes:
    """An original-mode ACK: MSH, MSA (code, echoed control ID, text) and one ERR per problem."""
    ts = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S+0000")
    event = header.message_type.partition("^")[2] or "R01"
    msh = "|".join([
        "MSH", "^~\\&", escape(header.receiving_app or "HCCNODE"), escape(header.receiving_facility or "HCCNODE"),
        escape(header.sending_app), escape(header.sending_facility), ts, "", f"ACK^{escape(event[:3])}^ACK",
        uuid.uuid4().hex[:20], escape(header.processing_id[:3] or "P"), escape(header.version[:8] or "2.5"),
    ])
    if problems and not text:
        text = problems[0].text
    segments = [msh, "|".join(["MSA", code, escape(header.control_id), escape(text[:80])])]
    for p in list(problems)[:MAX_ERR_SEGMENTS]:
        location = "^".join([p.segment, str(p.sequence) if p.sequence else "", str(p.field) if p.field else ""])
        segments.append("|".join(["ERR", "", location.rstrip("^"), f"{p.code}^{_ERROR_TEXT[p.code]}^HL70357", "E",
                                  "", "", "", escape(p.text)]))
    return ("\r".join(segments) + "\r").encode("utf-8")


# --- the application side of the listener --------------------------------------------------------


def handle(store: Store, catalog: Catalog, raw: bytes, peer: str = "",
           raw_id: int | None = None) -> tuple[bytes, Stored | None]:
    """Process one de-framed message; returns the ACK and what was stored. Never raises.

    `raw_id`: the message is already kept in that `labs_raw` row (a retry): update it, keep no copy.
    """
    header = Header()
    try:
        text = decode(raw)
        header = read_header(text)
        parsed = parse(text, catalog)
    except Rejected as exc:
        return _reject(store, raw, peer, header, exc.ack_code, exc.problems, raw_id=raw_id), None
    except Exception as exc:  # a bug here must not cost the message or the listener
        log.event("hl7.error", level=logging.ERROR, error=type(exc).__name__)
        problem = Problem(INTERNAL, "internal error while parsing")
        return _reject(store, raw, peer, header, "AE", [problem], raw_id=raw_id), None
    meta = dict(source="hl7", origin=peer, control_id=header.control_id, facility=header.sending_facility,
                message_type=header.message_type)
    try:
        with store.tx():
            if raw_id is None and find_duplicate(store, header.sending_facility, header.control_id, raw):
                save_raw(store, raw, outcome="duplicate", reason="resend of an accepted message", **meta)
                stored = Stored(None)
            else:
                if raw_id is None:
                    raw_id = save_raw(store, raw, outcome="AA", **meta)
                else:
                    set_raw_outcome(store, raw_id, "AA", "accepted when reprocessed")
                stored = store_results(store, parsed.results, source="hl7", raw_id=raw_id,
                                       control_id=header.control_id, facility=header.sending_facility)
    except Exception as exc:
        log.event("hl7.error", level=logging.ERROR, error=type(exc).__name__, control_id=header.control_id)
        problem = Problem(INTERNAL, "internal error while storing; not stored")
        return _reject(store, raw, peer, header, "AE", [problem], raw_id=raw_id), None
    log.event("hl7.stored", control_id=header.control_id, results=stored.rows, changes=len(stored.changes),
              duplicate=stored.raw_id is None or None)
    return build_ack(header, "AA"), stored


def handle_oversized(store: Store, head: bytes, size: int, limit: int, peer: str = "") -> bytes:
    """AR for a frame larger than `limit` bytes; its first `limit` bytes are kept."""
    try:
        header = read_header(head.decode("latin-1").replace("\n", "\r"))
    except Exception:
        header = Header()
    problem = Problem(SEGMENT_SEQUENCE, f"message of {size} bytes exceeds the {limit}-byte limit; not processed")
    return _reject(store, head, peer, header, "AR", [problem], size=size)


def _reject(store: Store, raw: bytes, peer: str, header: Header, code: str, problems: list[Problem],
            size: int | None = None, raw_id: int | None = None) -> bytes:
    reason = "; ".join(p.text for p in problems)[:2000]
    try:
        if raw_id is not None:
            set_raw_outcome(store, raw_id, code, reason)
        else:
            save_raw(store, raw, source="hl7", outcome=code, reason=reason, origin=peer, control_id=header.control_id,
                     facility=header.sending_facility, message_type=header.message_type, size=size)
    except Exception as exc:  # the ACK still tells the sender; the log says the copy is missing
        log.event("hl7.raw_lost", level=logging.ERROR, error=type(exc).__name__, control_id=header.control_id)
    log.event("hl7.rejected", level=logging.WARNING, ack=code, control_id=header.control_id, reason=problems[0].text[:200])
    return build_ack(header, code, problems)


def reprocess(store: Store, catalog: Catalog, raw_ids: list[int] | None = None) -> list[tuple[int, Stored | None]]:
    """Run kept AE messages through `handle` again (e.g. after a site added a unit or a synonym).

    The kept row is updated in place (AA and its results, or AE with the new reason). Returns
    (row id, what was stored, or None if rejected again). AR messages are not retried: they
    cannot become acceptable without being changed.
    """
    out = []
    for row in raw_messages(store, "hl7", "AE", raw_ids):
        _, stored = handle(store, catalog, row["raw"], row["origin"] or "", raw_id=row["id"])
        out.append((row["id"], stored))
    log.event("hl7.reprocessed", messages=len(out), accepted=sum(s is not None for _, s in out))
    return out
