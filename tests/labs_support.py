"""Builders shared by the tests/test_labs_*.py files: ORU^R01 messages and ACK reading."""

from __future__ import annotations

import socket

from hccnode.labs.mllp import FrameReader


def obx(n: int, code: str, value: str, unit: str, status: str = "F", time: str = "", system: str = "LN",
        vtype: str = "NM", ref: str = "", flag: str = "") -> str:
    """OBX with OBX-3 code^text^system, OBX-5 value, OBX-6 unit, OBX-7, OBX-8, OBX-11 status, OBX-14 time."""
    return f"OBX|{n}|{vtype}|{code}^{code} text^{system}||{value}|{unit}|{ref}|{flag}|||{status}|||{time}"


def oru(*obxs: str, control: str = "MSG1", pid: str = "PID|1||123456^^^HOSP^MR||Doe^Jane",
        obr_time: str = "20240105080000", msg_type: str = "ORU^R01^ORU_R01", version: str = "2.5",
        extra_msh: str = "") -> str:
    msh = f"MSH|^~\\&|LIS|LAB|HCCNODE|RAD|20240105103000||{msg_type}|{control}|P|{version}{extra_msh}"
    segs = [msh]
    if pid:
        segs.append(pid)
    segs.append(f"OBR|1|||CBC^Blood count|||{obr_time}")
    segs.extend(obxs)
    return "\r".join(segs) + "\r"


def ack_fields(ack: bytes | str) -> dict:
    """MSA-1, MSA-2, MSA-3 and the ERR segments of an ACK (framed or not)."""
    text = ack.decode("utf-8") if isinstance(ack, bytes) else ack
    text = text.strip("\x0b\x1c\r")
    segs = [s.split("|") for s in text.split("\r") if s]
    assert segs[0][0] == "MSH" and segs[0][8].startswith("ACK"), text
    msa = next(s for s in segs if s[0] == "MSA")
    return {"code": msa[1], "control": msa[2], "text": msa[3] if len(msa) > 3 else "",
            "errors": [s for s in segs if s[0] == "ERR"]}


# A hang guard, not a measure: the listener answers and closes once it reads the half-close,
# however long a loaded machine makes that take.
HANG_GUARD_SECONDS = 120.0


def exchange(port: int, data: bytes, timeout: float = HANG_GUARD_SECONDS) -> list[bytes]:
    """Send raw bytes, half-close, and return every frame received until the server closes."""
    frames: list[bytes] = []
    reader = FrameReader(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except TimeoutError:
            raise AssertionError(f"the listener took nothing for {timeout:g} s") from None
        except OSError:
            pass  # the server may close first (e.g. an oversized frame); read what it said
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"the listener neither answered nor closed in {timeout:g} s") from None
            if not chunk:
                break
            frames.extend(p for kind, p, _ in reader.feed(chunk) if kind == "message")
    return frames
