"""DIMSE command sets encoded directly, not through pydicom's dataset writer.

A DIMSE message's command set is always Implicit VR Little Endian and holds group 0000 elements
only (PS3.7 6.3.1, E.1). pynetdicom encodes it with pydicom's `write_dataset`, twice per message
(once for the Command Group Length, once to send it): about 0.15 ms of the 0.3 ms a C-STORE
response costs the receiving thread, for every instance received.

Command sets hold a few elements of a few VRs (PS3.7 Table E.1-1): UL, US, UI, AE, LO and CS.
`encode` writes those itself, each element as tag, 32-bit length and value padded to even length
(PS3.5 7.1.3; UI with a NUL, text with a space, PS3.5 6.2), and hands anything else (another VR,
several values, a character outside ASCII, a group other than 0000, another transfer syntax) to
pynetdicom's own encoder, so the bytes are the same as pynetdicom's (tests/test_command_set.py).
"""

from __future__ import annotations

import struct

import pynetdicom.dimse_messages
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode as pynetdicom_encode

_INTEGER = {"UL": struct.Struct("<I"), "US": struct.Struct("<H")}
_TEXT_PAD = {"UI": b"\0", "AE": b" ", "LO": b" ", "CS": b" ", "SH": b" ", "ST": b" "}
_HEADER = struct.Struct("<HHI")


def _command_set(ds: Dataset) -> bytes | None:
    """The Implicit VR Little Endian encoding of a command set of simple values; None otherwise."""
    parts = []
    for elem in ds:
        tag, vr, value = elem.tag, elem.VR, elem.value
        if tag >> 16:
            return None
        if value is None or value == "":
            raw = b""
        elif vr in _INTEGER and type(value) is int and 0 <= value < 2 ** (8 * _INTEGER[vr].size):
            raw = _INTEGER[vr].pack(value)
        elif vr in _TEXT_PAD and isinstance(value, str) and value.isascii():
            raw = value.encode("ascii")
            if len(raw) % 2:
                raw += _TEXT_PAD[vr]
        else:
            return None
        parts.append(_HEADER.pack(tag >> 16, tag & 0xFFFF, len(raw)))
        parts.append(raw)
    return b"".join(parts)


def encode(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False) -> bytes | None:
    """pynetdicom's `dsutils.encode`, with command sets of simple values written directly."""
    if is_implicit_vr and is_little_endian and not deflated:
        raw = _command_set(ds)
        if raw is not None:
            return raw
    return pynetdicom_encode(ds, is_implicit_vr, is_little_endian, deflated)


def install() -> bool:
    """Have pynetdicom's DIMSE messages use `encode`; False (and nothing changed) when a
    pynetdicom version no longer encodes them through `dsutils.encode`."""
    current = getattr(pynetdicom.dimse_messages, "encode", None)
    if current not in (pynetdicom_encode, encode):
        return False
    pynetdicom.dimse_messages.encode = encode
    return True
