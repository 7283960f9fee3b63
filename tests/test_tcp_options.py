"""hccnode.net.tcp_options: TCP_NODELAY before every write and TCP_QUICKACK after every read of
a DICOM association's socket, so small PDUs are not held back for TCP acknowledgements. Real
loopback sockets; what this buys is measured by bench/small_instances.py."""

from __future__ import annotations

import socket

import pytest
from pynetdicom import transport

from hccnode.net import tcp_options

QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class Recording:
    """A connected socket that records the TCP options set on it (the rest is the real socket's)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.options: list[int] = []

    def recv(self, n: int) -> bytes:
        return self.sock.recv(n)

    def send(self, data) -> int:
        return self.sock.send(data)

    def setsockopt(self, level: int, name: int, value: int) -> None:
        assert level == socket.IPPROTO_TCP and value == 1
        self.options.append(name)
        self.sock.setsockopt(level, name, value)


class Side:
    """What pynetdicom's AssociationSocket.recv and .send use of themselves: `socket`, and for
    send an association for its data-sent event (none here: the event finds no handlers)."""

    def __init__(self, sock):
        self.socket = sock
        self.assoc = None


@pytest.fixture
def pair():
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()
    yield sender, receiver
    sender.close()
    receiver.close()


def test_install_wraps_reads_and_writes_once():
    tcp_options.install()
    wrapped = transport.AssociationSocket.recv, transport.AssociationSocket.send
    assert all(getattr(f, "_hccnode_tcp", False) for f in wrapped)
    tcp_options.install()
    assert (transport.AssociationSocket.recv, transport.AssociationSocket.send) == wrapped


@pytest.mark.skipif(QUICKACK is None, reason="TCP_QUICKACK is Linux's")
def test_each_read_returns_the_bytes_and_is_followed_by_a_quick_ack(pair):
    sender, receiver = pair
    tcp_options.install()
    side = Side(Recording(receiver))
    # a P-DATA PDU as dcmtk writes it: the PDU header and the PDV item header, then the body
    sender.sendall(b"\x04\x00\x00\x00\x00\x0a" + b"\x00\x00\x00\x06\x01\x03")
    sender.sendall(b"body")
    assert transport.AssociationSocket.recv(side, 6) == bytearray(b"\x04\x00\x00\x00\x00\x0a")
    assert side.socket.options == [QUICKACK]
    assert transport.AssociationSocket.recv(side, 10) == bytearray(b"\x00\x00\x00\x06\x01\x03body")
    assert side.socket.options == [QUICKACK, QUICKACK]
    # the kernel took it: the socket is in quick-acknowledgement mode after the read
    assert receiver.getsockopt(socket.IPPROTO_TCP, QUICKACK) == 1


def test_writes_go_with_nagle_off_set_once_per_socket(pair, monkeypatch):
    sender, receiver = pair
    tcp_options.install()
    monkeypatch.setattr(transport.evt, "trigger", lambda *a, **k: None)   # no association behind it
    side = Side(Recording(sender))
    assert sender.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    transport.AssociationSocket.send(side, b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    transport.AssociationSocket.send(side, b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    assert side.socket.options == [socket.TCP_NODELAY]
    assert sender.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    got = b""
    while len(got) < 20:
        got += receiver.recv(20 - len(got))
    assert got == b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"


def test_a_socket_closed_meanwhile_or_absent_is_left_alone(pair):
    _, receiver = pair
    receiver.close()
    tcp_options.quick_ack(receiver)       # the OSError (bad file descriptor) is swallowed
    tcp_options.no_delay(receiver)
    tcp_options.quick_ack(None)
