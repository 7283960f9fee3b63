"""MLLP listener for HL7 v2 lab results (framing: 0x0B message 0x1C 0x0D).

One thread per connection, at most `max_connections` at once. The listener survives anything a
peer sends: bytes outside a frame are skipped, a frame larger than `max_bytes` is answered AR
(its head kept), a frame cut off by a new start block, a close or a timeout is kept in
`labs_raw` as `incomplete` and not acknowledged (there is no message to acknowledge), a peer
that trickles a frame slower than `frame_timeout` or idles longer than `idle_timeout` is
disconnected. Every complete frame gets exactly one ACK (see `hl7v2.handle`).

The lead wires `MllpListener.from_config(cfg, store, on_stored=...)` into `hccnode serve`;
`on_stored(stored)` receives each accepted message's `Stored` (its `changes` feed the re-queue).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable

from hccnode import log
from hccnode.labs import catalog as catalog_mod
from hccnode.labs import hl7v2
from hccnode.net.tcp_options import quick_ack
from hccnode.store.labs import Stored, save_raw
from hccnode.store import audit
from hccnode.store.db import Store

SB, EB = b"\x0b", b"\x1c"
REFUSE_DRAIN_SECONDS = 1.0  # how long a refused peer may take to close its side


class FrameReader:
    """Incremental MLLP de-framer. `feed(bytes)` returns the frames completed by those bytes.

    Each event is (kind, payload, size): kind "message" (a complete frame), "oversized" (a
    complete frame of `size` bytes of which `payload` holds the first `max_bytes`), or
    "truncated" (a frame interrupted by a new start block).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.in_frame = False
        self.buf = bytearray()
        self.size = 0
        self.skipped = 0  # bytes outside frames, other than CR/LF
        self.started = 0.0  # time.monotonic() when the current frame began

    def feed(self, data: bytes) -> list[tuple[str, bytes, int]]:
        events: list[tuple[str, bytes, int]] = []
        i, n = 0, len(data)
        while i < n:
            if not self.in_frame:
                j = data.find(SB, i)
                outside = data[i:] if j < 0 else data[i:j]
                self.skipped += len(outside) - outside.count(b"\r") - outside.count(b"\n")
                if j < 0:
                    break
                self._start()
                i = j + 1
                continue
            ends = [k for k in (data.find(EB, i), data.find(SB, i)) if k >= 0]
            end = min(ends) if ends else n
            self._append(data[i:end])
            if end == n:
                break
            if data[end:end + 1] == EB:
                kind = "oversized" if self.size > self.max_bytes else "message"
                events.append((kind, bytes(self.buf), self.size))
                self.in_frame = False
            else:  # a start block inside a frame: the frame so far was cut off
                events.append(("truncated", bytes(self.buf), self.size))
                self._start()
            i = end + 1
        return events

    def _start(self) -> None:
        self.in_frame = True
        self.buf.clear()
        self.size = 0
        self.started = time.monotonic()

    def _append(self, chunk: bytes) -> None:
        room = self.max_bytes - len(self.buf)
        if room > 0:
            self.buf += chunk[:room]
        self.size += len(chunk)

    def take_partial(self) -> tuple[bytes, int]:
        """The unfinished frame (for keeping); resets the reader."""
        out = (bytes(self.buf), self.size)
        self.in_frame = False
        self.buf.clear()
        self.size = 0
        return out


def frame(message: bytes | str) -> bytes:
    """Wrap one message in an MLLP frame."""
    data = message.encode("utf-8") if isinstance(message, str) else message
    return SB + data + EB + b"\r"


def _allowed_networks(entries: list[str]) -> list:
    nets = []
    for e in entries:
        try:
            nets.append(ipaddress.ip_network(e, strict=False))
        except ValueError:  # a host name: allow the addresses it resolves to now
            try:
                for info in socket.getaddrinfo(e, None):
                    nets.append(ipaddress.ip_network(info[4][0]))
            except OSError:
                log.event("hl7.allowed_host_unresolved", level=logging.WARNING, host=e)
    return nets


class MllpListener:
    """Threaded MLLP server; `start()` returns once it listens, `stop()` closes everything."""

    def __init__(self, store: Store, catalog: catalog_mod.Catalog | None = None, host: str = "127.0.0.1",
                 port: int = 2575, allowed_hosts: list[str] | tuple = (), max_bytes: int = 1 << 20,
                 read_timeout: float = 30.0, frame_timeout: float = 120.0, idle_timeout: float = 600.0,
                 max_connections: int = 32, on_stored: Callable[[Stored], None] | None = None):
        self.store = store
        self.catalog = catalog or catalog_mod.load(store.data_dir)
        self.host, self._port = host, port
        self.allowed = _allowed_networks(list(allowed_hosts))
        self.restricted = bool(allowed_hosts)
        self.max_bytes, self.read_timeout = max_bytes, read_timeout
        self.frame_timeout, self.idle_timeout = frame_timeout, idle_timeout
        self.on_stored = on_stored
        self._slots = threading.BoundedSemaphore(max_connections)
        self._conns: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, cfg, store: Store, **kwargs) -> "MllpListener":
        return cls(store, host=cfg.hl7.host, port=cfg.hl7.port, allowed_hosts=cfg.hl7.allowed_hosts, **kwargs)

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        return self._server.server_address[1] if self._server else self._port

    def start(self) -> None:
        listener = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                listener._serve(self.request, self.client_address)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            block_on_close = False

        self._server = Server((self.host, self._port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="hl7-mllp", daemon=True)
        self._thread.start()
        log.event("hl7.listening", host=self.host, port=self.port)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            for s in list(self._conns):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)
        log.event("hl7.stopped")

    # --- one connection ---------------------------------------------------------------------

    def _serve(self, sock: socket.socket, address) -> None:
        peer = f"{address[0]}:{address[1]}"
        if self.restricted and not self._allowed(address[0]):
            return self._refuse(sock, peer, "not in hl7.allowed_hosts")
        if not self._slots.acquire(blocking=False):
            return self._refuse(sock, peer, "too many connections")
        with self._lock:
            self._conns.add(sock)
            self._threads.add(threading.current_thread())
        log.event("hl7.connected", peer=peer)
        try:
            self._converse(sock, peer)
        except Exception as exc:  # never let one connection take the listener down
            log.event("hl7.connection_error", level=logging.ERROR, peer=peer, error=type(exc).__name__)
        finally:
            with self._lock:
                self._conns.discard(sock)
                self._threads.discard(threading.current_thread())
            self._slots.release()
            self.store.close()  # this thread's database connection
            log.event("hl7.disconnected", peer=peer)

    def _refuse(self, sock: socket.socket, peer: str, reason: str) -> None:
        """Close a connection we will not serve, without reading what it sent: log and audit the
        peer and the reason (never the message, which may carry PHI), send FIN, and discard what
        the peer sends until it closes too (bounded), so it sees a clean close rather than a reset."""
        log.event("hl7.refused", level=logging.WARNING, peer=peer, reason=reason)
        try:
            audit.append(self.store, "hl7.refused", f"host:{peer.rsplit(':', 1)[0]}", peer=peer, reason=reason)
        except Exception as exc:
            log.event("audit.failed", level=logging.ERROR, audit_event="hl7.refused", error=type(exc).__name__)
        finally:
            self.store.close()  # this thread's database connection
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + REFUSE_DRAIN_SECONDS
            discarded = 0
            while discarded <= self.max_bytes and (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                discarded += len(chunk)
        except OSError:
            pass

    def _allowed(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        return any(addr in n for n in self.allowed if n.version == addr.version)

    def _converse(self, sock: socket.socket, peer: str) -> None:
        reader = FrameReader(self.max_bytes)
        frame_late = "frame not completed within the frame timeout"
        while not self._stopping.is_set():
            frame_bound = False  # whether the frame's deadline, not the read timeout, bounds this read
            if reader.in_frame:
                left = self.frame_timeout - (time.monotonic() - reader.started)
                if left <= 0:
                    return self._keep_partial(reader, peer, frame_late)
                frame_bound = left < self.read_timeout
                sock.settimeout(min(self.read_timeout, left))
            else:
                sock.settimeout(self.idle_timeout)
            try:
                data = sock.recv(65536)
                quick_ack(sock)   # a frame written in pieces is not held for our delayed ACK
            except TimeoutError:
                if reader.in_frame:
                    self._keep_partial(reader, peer, frame_late if frame_bound else
                                       "peer stopped sending in the middle of a frame")
                return
            except OSError:
                data = b""
            if not data:
                if reader.in_frame:
                    self._keep_partial(reader, peer, "connection closed in the middle of a frame")
                return
            for kind, payload, size in reader.feed(data):
                if kind == "truncated":
                    self._save_incomplete(payload, size, peer, "frame cut off by a new start block")
                    continue
                if kind == "oversized":
                    ack = hl7v2.handle_oversized(self.store, payload, size, self.max_bytes, peer)
                else:
                    ack, stored = hl7v2.handle(self.store, self.catalog, payload, peer)
                    if stored and stored.changes and self.on_stored:
                        try:
                            self.on_stored(stored)
                        except Exception as exc:
                            log.event("hl7.on_stored_failed", level=logging.ERROR, error=type(exc).__name__)
                try:
                    sock.sendall(frame(ack))
                except OSError:
                    return
            if reader.skipped > self.max_bytes:
                log.event("hl7.garbage", level=logging.WARNING, peer=peer, skipped=reader.skipped)
                return

    def _keep_partial(self, reader: FrameReader, peer: str, reason: str) -> None:
        payload, size = reader.take_partial()
        self._save_incomplete(payload, size, peer, reason)

    def _save_incomplete(self, payload: bytes, size: int, peer: str, reason: str) -> None:
        try:
            save_raw(self.store, payload, source="hl7", outcome="incomplete", reason=reason, origin=peer, size=size)
        except Exception as exc:
            log.event("hl7.raw_lost", level=logging.ERROR, error=type(exc).__name__)
        log.event("hl7.incomplete", level=logging.WARNING, peer=peer, size=size, reason=reason)
