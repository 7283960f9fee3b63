"""MLLP listener over real loopback sockets: ACKs, storage, corrections, rejections, and robustness."""

import random
import socket
import threading
import time

import pytest
from hl7.client import MLLPClient
from hypothesis import given, settings, strategies as st

from hccnode.labs.mllp import EB, SB, FrameReader, MllpListener, frame
from hccnode.store.db import Store
from conftest import wait_until
from labs_support import HANG_GUARD_SECONDS, ack_fields, exchange, obx, oru

MAX = 8192
# The listener's own timeouts, long enough that a loaded machine's stalls never reach them; the
# tests of a timeout each set the one they test short and leave the others long.
LONG = 60.0


@pytest.fixture
def listen(tmp_path):
    """Starts listeners on a store in tmp_path (stopped after the test); keyword arguments as MllpListener."""
    store = Store(tmp_path)
    listeners = []

    def start(**kwargs) -> MllpListener:
        stored = []
        kwargs = {"max_bytes": MAX, "read_timeout": LONG, "frame_timeout": LONG, "idle_timeout": LONG, **kwargs}
        listener = MllpListener(store, port=0, on_stored=stored.append, **kwargs)
        listener.start()
        listener.stored = stored
        listeners.append(listener)
        return listener

    yield start
    for listener in listeners:
        listener.stop()
    store.close()


@pytest.fixture
def node(listen):
    return listen()


def query(node, sql, params=()):
    return node.store.query(sql, params)


def send(node, *messages):
    with MLLPClient("127.0.0.1", node.port) as c:
        return [ack_fields(c.send_message(m)) for m in messages]


def test_results_over_mllp_are_acknowledged_and_stored(node):
    t = "20240105081500"
    acks = send(node, oru(obx(1, "4544-3", "42", "%", time=t), obx(2, "26881-3", "6.1", "pg/mL", time=t), control="M1"),
                oru(obx(1, "4544-3", "40", "%", "C", t), control="M2"),
                oru(obx(1, "26881-3", "", "pg/mL", "D", t), control="M3"))
    assert [(a["code"], a["control"]) for a in acks] == [("AA", "M1"), ("AA", "M2"), ("AA", "M3")]
    rows = query(node, "SELECT test, value, status, state FROM labs ORDER BY id")
    assert rows == [
        {"test": "hct", "value": 0.42, "status": "F", "state": "superseded"},
        {"test": "il6", "value": 6.1, "status": "F", "state": "withdrawn"},
        {"test": "hct", "value": 0.40, "status": "C", "state": "current"},
        {"test": "il6", "value": None, "status": "D", "state": "withdrawal"},
    ]
    assert [[c.action for c in s.changes] for s in node.stored] == [["stored", "stored"], ["replaced"], ["withdrawn"]]


def test_rejections_over_mllp_keep_the_raw_message(node):
    bad_type = oru(obx(1, "4544-3", "42", "%"), msg_type="ADT^A01", control="R1")
    bad_unit = oru(obx(1, "4544-3", "42", "mmol/L"), control="R2")
    no_time = oru(obx(1, "4544-3", "42", "%"), obr_time="", control="R3")
    acks = send(node, bad_type, bad_unit, no_time)
    assert [(a["code"], a["control"]) for a in acks] == [("AR", "R1"), ("AE", "R2"), ("AE", "R3")]
    assert all(a["errors"] for a in acks)
    raws = query(node, "SELECT outcome, raw FROM labs_raw ORDER BY id")
    assert [(r["outcome"], r["raw"].decode()) for r in raws] == [("AR", bad_type), ("AE", bad_unit), ("AE", no_time)]
    assert query(node, "SELECT * FROM labs") == []


def test_several_messages_in_one_write_get_one_ack_each_in_order(node):
    data = b"".join(frame(oru(obx(1, "4544-3", str(40 + i), "%", time=f"2024010{i + 1}0800"), control=f"B{i}"))
                    for i in range(5))
    acks = [ack_fields(f) for f in exchange(node.port, b"\r\n" + data)]
    assert [(a["code"], a["control"]) for a in acks] == [("AA", f"B{i}") for i in range(5)]


def test_oversized_frame_answered_ar_head_kept_and_connection_still_usable(node):
    big = oru(obx(1, "4544-3", "42", "%"), control="BIG") + "NTE|1||" + "x" * (MAX * 3) + "\r"
    acks = send(node, big, oru(obx(1, "4544-3", "42", "%"), control="OK"))
    assert [(a["code"], a["control"]) for a in acks] == [("AR", "BIG"), ("AA", "OK")]
    raw = query(node, "SELECT size, length(raw) AS kept, outcome FROM labs_raw WHERE control_id = 'BIG'")[0]
    assert raw == {"size": len(big), "kept": MAX, "outcome": "AR"}


def test_truncated_frame_is_kept_unanswered_and_the_next_frame_served(node):
    data = SB + oru(obx(1, "4544-3", "42", "%"), control="CUT")[:60].encode() + frame(
        oru(obx(1, "4544-3", "42", "%"), control="NEXT"))
    acks = [ack_fields(f) for f in exchange(node.port, data)]
    assert [a["control"] for a in acks] == ["NEXT"]
    assert query(node, "SELECT outcome, reason FROM labs_raw WHERE outcome = 'incomplete'")[0]["reason"].startswith("frame cut off")


def test_abrupt_close_mid_frame_keeps_partial(node):
    with socket.create_connection(("127.0.0.1", node.port)) as s:
        s.sendall(SB + b"MSH|^~\\&|LIS|LAB|||20240105||ORU^R01|X1|P|2.5\rPID|1||1")
    wait_until(lambda: query(node, "SELECT 1 FROM labs_raw"), HANG_GUARD_SECONDS, interval=0.02, what="the partial kept")
    assert query(node, "SELECT outcome FROM labs_raw") == [{"outcome": "incomplete"}]


def incomplete_reasons(node) -> list[str]:
    return [r["reason"] for r in query(node, "SELECT reason FROM labs_raw WHERE outcome = 'incomplete' ORDER BY id")]


def test_slow_client_is_disconnected_and_others_are_served(listen):
    node = listen(read_timeout=2.0)
    slow = socket.create_connection(("127.0.0.1", node.port))
    slow.sendall(SB + b"MSH|")  # then nothing: the read timeout ends it
    assert send(node, oru(obx(1, "4544-3", "42", "%"), control="FAST"))[0]["code"] == "AA"
    slow.settimeout(HANG_GUARD_SECONDS)
    assert slow.recv(100) == b""  # closed by the server, not by us
    slow.close()
    assert incomplete_reasons(node) == ["peer stopped sending in the middle of a frame"]  # for the read timeout


def test_trickling_client_hits_the_frame_timeout(listen):
    node = listen(frame_timeout=3.0)  # the read timeout stays long: a stalled sleep never reaches it
    with socket.create_connection(("127.0.0.1", node.port)) as s:
        s.settimeout(HANG_GUARD_SECONDS)
        s.sendall(SB)
        closed = False
        for _ in range(100):  # one byte every 0.1 s or slower (10 s or more): the frame never ends
            try:
                s.sendall(b"x")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        if not closed:
            closed = s.recv(10) == b""
        assert closed
    assert incomplete_reasons(node) == ["frame not completed within the frame timeout"]


def test_allowed_hosts_refuses_other_peers(tmp_path):
    store = Store(tmp_path)
    listener = MllpListener(store, port=0, allowed_hosts=["10.1.2.3"])
    listener.start()
    try:
        assert exchange(listener.port, frame(oru(obx(1, "4544-3", "42", "%")))) == []
        assert store.query("SELECT * FROM labs_raw") == []
    finally:
        listener.stop()
    listener = MllpListener(store, port=0, allowed_hosts=["127.0.0.0/8"])
    listener.start()
    try:
        assert len(exchange(listener.port, frame(oru(obx(1, "4544-3", "42", "%"))))) == 1
    finally:
        listener.stop()


def test_stop_closes_open_connections(tmp_path):
    store = Store(tmp_path)
    listener = MllpListener(store, port=0)
    listener.start()
    s = socket.create_connection(("127.0.0.1", listener.port))
    s.settimeout(HANG_GUARD_SECONDS)
    s.sendall(frame(oru(obx(1, "4544-3", "42", "%"))))  # its ACK: the listener is serving this connection
    answered = b""
    while not answered.endswith(EB + b"\r"):
        chunk = s.recv(4096)
        assert chunk, "closed before the ACK"
        answered += chunk
    listener.stop()
    assert s.recv(10) == b""
    s.close()


# --- fuzzing ---------------------------------------------------------------------------------------


def _mutations(rng: random.Random, n: int):
    """(bytes, expected ACK count or None when unknown): a bounded, seeded mix of damaged input."""
    base = [oru(obx(1, "4544-3", "42", "%", time="20240105081500"), obx(2, "1988-5", "<5", "mg/L"), control="F"),
            oru(obx(1, "751-8", "^4.2", "10*9/L", vtype="SN"), pid="PID|1||77^^^H&1.2&ISO^MR~88^^^X^PI")]
    alphabet = b"|^~\\&\r\n0123456789ABCMSHPIDOBXR .-<>" + bytes(range(0, 256, 17))
    for i in range(n):
        msg = bytearray(rng.choice(base).encode())
        kind = i % 6
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 12)):
                msg[rng.randrange(len(msg))] = rng.choice(alphabet)
        elif kind == 1:  # cut the message short
            msg = msg[: rng.randrange(len(msg))]
        elif kind == 2:  # insert delimiter noise
            for _ in range(rng.randint(1, 8)):
                p = rng.randrange(len(msg))
                msg[p:p] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
        elif kind == 3:  # drop a random span
            a = rng.randrange(len(msg))
            del msg[a: a + rng.randint(1, 40)]
        if kind in (0, 1, 2, 3):
            body = bytes(msg).replace(SB, b"").replace(EB, b"")
            yield SB + body + EB + b"\r", 1
        elif kind == 4:  # a frame that never ends
            yield SB + bytes(msg[: rng.randrange(1, len(msg))]).replace(EB, b""), 0
        else:  # raw garbage, framing bytes included
            yield bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))), None


def test_listener_survives_1000_fuzzed_messages_then_stores_valid_ones(node):
    rng = random.Random(20240105)
    for data, expected in _mutations(rng, 1000):
        frames = exchange(node.port, data)
        for f in frames:
            assert ack_fields(f)["code"] in ("AA", "AE", "AR")
        if expected is not None:
            assert len(frames) == expected, data
    assert node._thread.is_alive()
    before = query(node, "SELECT count(*) AS n FROM labs WHERE patient_id = 'AFTER'")[0]["n"]
    acks = send(node, oru(obx(1, "4544-3", "39", "%", time="20240301090000"),
                          pid="PID|1||AFTER^^^HOSP^MR", control="AFTER1"))
    assert acks[0]["code"] == "AA"
    assert query(node, "SELECT count(*) AS n FROM labs WHERE patient_id = 'AFTER'")[0]["n"] == before + 1
    counts = {r["outcome"]: r["n"] for r in query(node, "SELECT outcome, count(*) AS n FROM labs_raw GROUP BY outcome")}
    assert counts.get("incomplete", 0) >= 1000 // 6  # every never-ending frame was kept


def test_concurrent_senders(node):
    errors = []

    def worker(k):
        try:
            acks = send(node, *[oru(obx(1, "4544-3", "42", "%", time=f"202401{j + 1:02d}0800"),
                                    pid=f"PID|1||C{k}^^^HOSP^MR", control=f"C{k}-{j}") for j in range(10)])
            assert all(a["code"] == "AA" for a in acks)
        except Exception as exc:  # collected: a thread's assertion would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG_GUARD_SECONDS)
    assert not errors
    assert query(node, "SELECT count(*) AS n FROM labs")[0]["n"] == 60


# --- the de-framer as a pure function ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=60).map(lambda b: b.replace(SB, b"").replace(EB, b"")), max_size=5),
       st.data())
def test_frame_reader_is_independent_of_chunking(payloads, data):
    stream = b"".join(frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = FrameReader(40)
    events = []
    for a, b in zip([0] + cuts, cuts + [len(stream)]):
        events += reader.feed(stream[a:b])
    assert [(k, s) for k, _, s in events] == [("message" if len(p) <= 40 else "oversized", len(p)) for p in payloads]
    assert [p for _, p, _ in events] == [p[:40] for p in payloads]
    assert not reader.in_frame
