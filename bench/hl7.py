"""Benchmark: ORU^R01 messages per second through the MLLP listener over one connection.

Starts a listener on 127.0.0.1 (free port) with a fresh data directory, sends N messages (each a
small panel: HCT, CRP, neutrophils, lymphocytes) one after another, waiting for each ACK as an
HL7 sender in original mode does, and prints the rate. Then N more from a sender that writes each
frame as three writes (start block, message, end block) with Nagle's algorithm on, as a sender
writing straight to its socket does, and prints that rate too (the listener acknowledges each
read at once: hccnode.net.tcp_options). Not run by the tests.

    python bench/hl7.py [N]
"""

from __future__ import annotations

import socket
import sys
import tempfile
import time
from pathlib import Path

# This file is named hl7.py: drop its own folder from the path so `import hl7` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hl7.client import MLLPClient  # noqa: E402

import hccnode.labs  # noqa: E402,F401  (tables)
from hccnode.labs.mllp import MllpListener  # noqa: E402
from hccnode.store.db import Store  # noqa: E402


def message(i: int) -> str:
    t = f"2024{1 + i % 12:02d}{1 + i % 28:02d}{i % 24:02d}{i % 60:02d}00"
    return "\r".join([
        f"MSH|^~\\&|LIS|LAB|HCCNODE|RAD|{t}||ORU^R01^ORU_R01|B{i}|P|2.5",
        f"PID|1||P{i % 500}^^^HOSP^MR||Bench^Patient",
        f"OBR|1|||CBC|||{t}",
        "OBX|1|NM|4544-3^Hematocrit^LN||41.5|%|36-46|N|||F",
        "OBX|2|NM|1988-5^CRP^LN||3.2|mg/L|<5|N|||F",
        "OBX|3|NM|751-8^Neutrophils^LN||4.1|10*9/L||N|||F",
        "OBX|4|NM|731-0^Lymphocytes^LN||1.6|10*9/L||N|||F",
    ]) + "\r"


def main(n: int = 5000) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = Store(d)
        listener = MllpListener(store, port=0)
        listener.start()
        msgs = [message(i) for i in range(n)]
        try:
            with MLLPClient("127.0.0.1", listener.port) as client:
                t0 = time.perf_counter()
                for m in msgs:
                    ack = client.send_message(m)
                    if b"MSA|AA" not in ack:
                        raise SystemExit(f"unexpected ACK: {ack[:200]!r}")
                elapsed = time.perf_counter() - t0
            pieces = in_three_writes(listener.port, [message(n + i) for i in range(n)])
        finally:
            listener.stop()
        rows = store.query("SELECT count(*) AS n FROM labs")[0]["n"]
    print(f"{n} ORU^R01 messages ({rows // 2} results) over one connection in {elapsed:.2f} s: "
          f"{n / elapsed:.0f} messages/s")
    print(f"{n} more, each frame written as three writes: {n / pieces:.0f} messages/s")


def in_three_writes(port: int, msgs: list[str]) -> float:
    """Seconds to send `msgs`, each frame as three writes with Nagle on, waiting for each ACK."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        t0 = time.perf_counter()
        for m in msgs:
            for part in (b"\x0b", m.encode(), b"\x1c\r"):
                sock.sendall(part)
            ack = b""
            while not ack.endswith(b"\x1c\r"):
                chunk = sock.recv(65536)
                if not chunk:
                    raise SystemExit("connection closed before the ACK")
                ack += chunk
            if b"MSA|AA" not in ack:
                raise SystemExit(f"unexpected ACK: {ack[:200]!r}")
        return time.perf_counter() - t0


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
