"""TCP options on every DICOM association's socket, so that small PDUs are not held back for
TCP acknowledgements: TCP_NODELAY on our writes, TCP_QUICKACK after our reads (Linux).

The stall. A sender with Nagle's algorithm on sends a small write only once everything it sent
before has been acknowledged. A receiver whose kernel delays its acknowledgements (Linux does, by
up to 40 ms, once it sees request and response alternate) then holds that write back until the
delayed acknowledgement leaves. DICOM peers write PDUs in pieces: dcmtk (storescu, and Orthanc's
DICOM side) writes a P-DATA PDU's 12-byte PDU and PDV header and then its body, and pynetdicom
writes a C-STORE's command PDU and then its data set PDU. So every C-STORE of an instance smaller
than a TCP segment waits about 40 ms once or twice. Measured over loopback, CT slices of 64x64
on one association (bench/small_instances.py, medians of 3 alternating rounds):
  - storescu (Debian's dcmtk 3.6.7 leaves Nagle on unless TCP_NODELAY=1 is in its environment)
    to the node: 20 instances/s before this module, 282 with it (300 with the sender's Nagle
    off); to a bare pynetdicom SCP, 22 (220);
  - pynetdicom to Orthanc 1.10 (as the outbox sends): 11 instances/s, 245 with this module
    installed in the sender (with TCP_NODELAY alone, 20 in a separate run: Orthanc's response then
    waits for our delayed acknowledgement).
Large instances (a 512x512 CT slice, 0.5 MB) fill whole segments and are not held: bench/ingest.py
measured 200 instances/s on one association before this module too.

What this module sets, on every socket pynetdicom's `AssociationSocket` reads or writes in this
process (associations we accept and associations we request; plain and TLS):
  - TCP_NODELAY before a write: pynetdicom writes each PDU whole with one `send` loop, so turning
    Nagle off sends no smaller segments than the PDUs themselves;
  - TCP_QUICKACK after a read: the pending acknowledgement leaves now and the next segments are
    acknowledged at once. The kernel goes back to delaying when it sees request and response
    alternate, so the option is set again after every read. The cost is one system call per read
    and ACK segments that would otherwise have ridden on the next response.

`install()` wraps `AssociationSocket.recv` and `.send` (pynetdicom.transport) once per process.
TCP_QUICKACK exists on Linux only; elsewhere only TCP_NODELAY is set. A socket that refuses an
option (closed meanwhile) is left as it is.

The HL7 listener (hccnode.labs.mllp) calls `quick_ack` after each read too: a sender that writes
an MLLP frame's start block, message and end block as three writes with Nagle on got 23
messages/s over one connection, against 670-1150 when it writes the frame at once (ORU^R01 of
bench/hl7.py, loopback); with the quick acknowledgement, see README "Labs".
"""

from __future__ import annotations

import socket
import threading

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_installing = threading.Lock()


def _set(sock: socket.socket | None, option: int | None) -> None:
    if sock is None or option is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)
    except OSError:
        pass


def quick_ack(sock: socket.socket | None) -> None:
    """Acknowledge what `sock` has received now, and the next segments at once (Linux)."""
    _set(sock, _QUICKACK)


def no_delay(sock: socket.socket | None) -> None:
    """Send `sock`'s writes at once, without waiting for acknowledgements (Nagle off)."""
    _set(sock, socket.TCP_NODELAY)


def install() -> None:
    """Wrap pynetdicom's socket reads (each followed by `quick_ack`) and writes (each preceded by
    `no_delay`, once per socket). Installing again changes nothing."""
    from pynetdicom import transport   # here: the MLLP listener uses quick_ack without pynetdicom

    with _installing:   # the receiver's start and a sender's first association may come at once
        _wrap(transport.AssociationSocket)


def _wrap(cls) -> None:
    if getattr(cls.recv, "_hccnode_tcp", False):
        return
    recv, send = cls.recv, cls.send

    def recv_and_ack(self, nr_bytes: int) -> bytearray:
        data = recv(self, nr_bytes)
        quick_ack(self.socket)
        return data

    def send_at_once(self, bytestream: bytes) -> None:
        if getattr(self, "_hccnode_nodelay", None) is not self.socket:
            no_delay(self.socket)
            self._hccnode_nodelay = self.socket
        send(self, bytestream)

    for wrapper, original in ((recv_and_ack, recv), (send_at_once, send)):
        wrapper._hccnode_tcp = True
        wrapper.__doc__ = original.__doc__
    cls.recv, cls.send = recv_and_ack, send_at_once
