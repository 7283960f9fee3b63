"""DIMSE command sets encoded directly (hccnode.net.command_set): the same bytes as pynetdicom's."""

from __future__ import annotations

import io

import pynetdicom.dimse_messages as messages
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import dimse_primitives as prim
from pynetdicom.dsutils import decode
from pynetdicom.dsutils import encode as pynetdicom_encode

from hccnode.net import command_set

CT = "1.2.840.10008.5.1.4.1.1.2"


def _store_rq(uid: str, move_ae: str = "") -> prim.C_STORE:
    p = prim.C_STORE()
    p.MessageID, p.AffectedSOPClassUID, p.AffectedSOPInstanceUID, p.Priority = 7, CT, uid, 2
    if move_ae:
        p.MoveOriginatorApplicationEntityTitle, p.MoveOriginatorMessageID = move_ae, 3
    return p


def _store_rsp(uid: str, status: int, comment: str = "") -> prim.C_STORE:
    p = prim.C_STORE()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID, p.AffectedSOPInstanceUID, p.Status = 65535, CT, uid, status
    if comment:
        p.ErrorComment = comment
    return p


def _echo_rsp() -> prim.C_ECHO:
    p = prim.C_ECHO()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID, p.Status = 1, "1.2.840.10008.1.1", 0
    return p


def _move_rsp() -> prim.C_MOVE:
    p = prim.C_MOVE()
    p.MessageIDBeingRespondedTo, p.AffectedSOPClassUID, p.Status = 2, "1.2.840.10008.5.1.4.1.2.2.2", 0xFF00
    p.NumberOfRemainingSuboperations, p.NumberOfCompletedSuboperations = 12, 300
    p.NumberOfFailedSuboperations, p.NumberOfWarningSuboperations = 0, 1
    return p


MESSAGES = {
    "C-STORE-RQ, odd UID": (messages.C_STORE_RQ, _store_rq("1.2.3.4.5")),
    "C-STORE-RQ, even UID, move originator": (messages.C_STORE_RQ, _store_rq("1.2.3.4.55", "PACS")),
    "C-STORE-RSP, success": (messages.C_STORE_RSP, _store_rsp("1.2.3.4.5", 0x0000)),
    "C-STORE-RSP, refused with an odd comment": (messages.C_STORE_RSP, _store_rsp("1.2.3", 0xA700, "spool disk full")),
    "C-STORE-RSP, non-ASCII comment": (messages.C_STORE_RSP, _store_rsp("1.2.3", 0xC000, "Größe")),
    "C-ECHO-RSP": (messages.C_ECHO_RSP, _echo_rsp()),
    "C-MOVE-RSP with counts": (messages.C_MOVE_RSP, _move_rsp()),
}


def _encoded(message_class, primitive, encoder) -> bytes:
    """The command set pynetdicom sends for `primitive` with `encoder` as its dsutils.encode."""
    saved = messages.encode
    messages.encode = encoder
    try:
        msg = message_class()
        msg.primitive_to_message(primitive)
        return b"".join(pdv[1][1:] for p in msg.encode_msg(1, 16384) for pdv in p.presentation_data_value_list
                        if pdv[1][0] & 1)   # command fragments only
    finally:
        messages.encode = saved


@pytest.mark.parametrize("name", MESSAGES)
def test_a_message_s_command_set_is_the_same_bytes_as_pynetdicom_writes(name):
    message_class, primitive = MESSAGES[name]
    ours = _encoded(message_class, primitive, command_set.encode)
    assert ours == _encoded(message_class, primitive, pynetdicom_encode)
    back = decode(io.BytesIO(ours), True, True)           # and reads back whole
    assert back.CommandGroupLength == len(ours) - 12


def test_what_it_does_not_write_itself_goes_to_pynetdicom(monkeypatch):
    calls = []
    monkeypatch.setattr(command_set, "pynetdicom_encode", lambda *a: calls.append(a) or b"pynetdicom's")
    offending = Dataset()
    offending.Status, offending.OffendingElement = 0x0106, [Tag(0x00100010)]        # AT, several values
    data = Dataset()
    data.PatientID = "X"                                                           # not a command set
    unicode = Dataset()
    unicode.ErrorComment = "Größe"
    for ds, implicit in ((offending, True), (data, True), (unicode, True), (Dataset(), False)):
        assert command_set.encode(ds, implicit, True) == b"pynetdicom's"
    assert len(calls) == 4


@settings(max_examples=200, deadline=None)
@given(uid=st.from_regex(r"\A[12](\.[1-9][0-9]{0,8}){1,6}\Z"), status=st.integers(0, 0xFFFF),
       message_id=st.integers(0, 0xFFFF), comment=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=64))
def test_store_responses_of_any_uid_status_and_comment_match_pynetdicom(uid, status, message_id, comment):
    p = _store_rsp(uid, status, comment)
    p.MessageIDBeingRespondedTo = message_id
    assert _encoded(messages.C_STORE_RSP, p, command_set.encode) == _encoded(messages.C_STORE_RSP, p, pynetdicom_encode)


def test_install_makes_pynetdicom_use_it(monkeypatch):
    monkeypatch.setattr(messages, "encode", pynetdicom_encode)   # put back after the test
    assert command_set.install() and command_set.install()
    assert messages.encode is command_set.encode
    monkeypatch.setattr(messages, "encode", lambda *a: None)     # a pynetdicom that changed it: left alone
    assert command_set.install() is False
