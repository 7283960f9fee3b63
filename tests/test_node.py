"""`hccnode serve` runs every listener: DICOM and HL7 (MLLP) in one process."""

from __future__ import annotations

import socket

import pytest

from conftest import free_port
from labs_support import ack_fields, obx, oru

pytestmark = pytest.mark.network


def mllp_send(port: int, message: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_serve_starts_the_mllp_listener_and_labs_are_stored(node_factory):
    hl7_port = free_port()
    node = node_factory(hl7={"enabled": True, "port": hl7_port}).start()
    ack = ack_fields(mllp_send(hl7_port, oru(obx(1, "4544-3", "41", "%", time="20240105080000"),
                                             control="NODE1")))
    assert ack["code"] == "AA" and ack["control"] == "NODE1"
    shown = node.cli("labs", "show", "123456")
    assert shown.returncode == 0 and "hct" in shown.stdout.lower() and "0.41" in shown.stdout
    node.stop()
    assert "hl7.listening" in node.log() and "123456" not in node.log()
