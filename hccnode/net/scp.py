"""The Storage SCP: accepts associations, answers C-ECHO, and keeps C-STORE datasets.

The C-STORE handler does only what durability needs (`Spool.ingest`: write the bytes as
received, fsync, index) and returns; analysis happens later from the job queue, so the
sender is never kept waiting on it.

Several receiver processes of one node (`[node] receiver_processes`, hccnode.net.receivers)
accept from the same listening sockets (`Listeners`), so each association is served whole by
whichever process accepts it first, and the association limit counts the open connections of
them all.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import socket
import socketserver
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from hccnode import log
from hccnode.config import NodeSection, TLSSection
from hccnode import dicom_status as status
from hccnode.net import command_set, polling, tcp_options, tls
from hccnode.store import audit
from hccnode.store.spool import Spool


def parse_allowed(entries: list[str]) -> list[tuple[str, str | None]]:
    """'AE' or 'AE@host' -> (ae_title, host or None)."""
    out = []
    for e in entries:
        ae, _, host = e.partition("@")
        out.append((ae.strip(), host.strip() or None))
    return out


def _same_host(peer: str, host: str) -> bool:
    """True when `peer` (an IP address) is `host` (an IP address or a name resolved now)."""
    try:
        return ipaddress.ip_address(peer) == ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return peer in {ai[4][0] for ai in socket.getaddrinfo(host, None)}
    except OSError:
        return False


def is_allowed(allowed: list[tuple[str, str | None]], calling_ae: str, peer: str) -> bool:
    if not allowed:
        return True
    return any(ae == calling_ae and (host is None or _same_host(peer, host)) for ae, host in allowed)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), non-blocking: when receiver processes share it, the
    ones that lose the race for a connection get nothing to accept and go back to waiting."""
    sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET, backlog=64)
    sock.setblocking(False)
    return sock


@dataclass
class Listeners:
    """What the receiver processes of one node share: the listening sockets (plain, TLS; None when
    not listening there) and, per process (`slot`), its count of open connections, so that the
    association limit holds for them all (`counts`: a shared array, one int per process)."""

    plain: socket.socket | None
    tls: socket.socket | None
    counts: Any
    slot: int = 0

    @classmethod
    def open(cls, cfg: NodeSection, tls_cfg: TLSSection | None, processes: int) -> "Listeners":
        plain = listen(cfg.host, cfg.port) if tls_cfg is None or tls_cfg.keep_plain_listener else None
        try:
            tls_sock = listen(cfg.host, tls_cfg.port) if tls_cfg is not None else None
        except OSError:
            if plain:
                plain.close()
            raise
        counts = multiprocessing.get_context("spawn").Array("i", processes, lock=False) if processes > 1 else [0]
        return cls(plain, tls_sock, counts)

    def for_slot(self, slot: int) -> "Listeners":
        return replace(self, slot=slot)


# How long a receiver process with more open connections than another leaves a new connection
# for the other to accept (then it takes the connection itself, if still there: the other may be
# busy or restarting).
HAND_OVER_SECONDS = 0.01


class _SharedServer(ThreadedAssociationServer):
    """pynetdicom's threaded association server on a listening socket opened by `listen` (and
    maybe shared with other receiver processes), not one it binds itself."""

    def __init__(self, *args, shared: Listeners, listener: socket.socket, accepted: Callable[[], None], **kwargs):
        self._shared, self._listener, self._accepted = shared, listener, accepted
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        self.socket.close()            # the one socketserver made: not used
        self.socket = self._listener
        self.server_address = self.socket.getsockname()

    def get_request(self):
        """Accept, leaving the connection a moment to a less busy receiver process, if any: each
        process wakes for every connection, and the first awake would otherwise take most."""
        counts, slot = self._shared.counts, self._shared.slot
        if counts[slot] > min(counts):
            time.sleep(HAND_OVER_SECONDS)
        request = super().get_request()   # BlockingIOError when another process took it (not served here)
        self._accepted()   # counted now, not when its thread starts: the next connection's choice sees it
        return request

    def server_activate(self) -> None:
        pass                           # listening already

    def server_close(self) -> None:
        # Only this process's descriptor: a shutdown() of the shared socket would stop the others too.
        self.socket.close()

    def shutdown(self) -> None:
        # pynetdicom's also removes the server from its AE's list, where make_server never put it.
        socketserver.TCPServer.shutdown(self)
        self.server_close()


class _SharedContexts(list):
    """The supported presentation contexts, not deep-copied for each association as pynetdicom
    does (171 abstract syntaxes x 45 transfer syntaxes: about 100 ms of CPU per association, each
    UID validated again). Negotiation only reads them (pynetdicom.presentation.negotiate_as_acceptor
    builds new contexts for its answer) and the node never changes them once listening."""

    def __deepcopy__(self, memo) -> list:
        return list(self)


class StorageSCP:
    """Wires pynetdicom's AE to the spool; `start()` returns once listening. `processes`: how many
    receiver processes will share the listeners (this one opens them); `shared`: the listeners of
    another process, to serve from them instead."""

    def __init__(self, cfg: NodeSection, spool: Spool, tls_cfg: TLSSection | None = None,
                 shared: Listeners | None = None, processes: int = 1):
        self.cfg = cfg
        self.tls_cfg = tls_cfg if tls_cfg and tls_cfg.enabled else None
        self.spool = spool
        self.allowed = parse_allowed(cfg.allowed)
        self.shared = shared
        self.processes = processes
        self.server: ThreadedAssociationServer | None = None       # plain listener
        self.tls_server: ThreadedAssociationServer | None = None   # TLS listener
        self._open: set[int] = set()          # connections now open in this process (ids of their associations)
        self._accepting = 0                   # accepted, their association not yet made
        self._open_lock = threading.Lock()
        self._outcomes: dict[int, Counter] = {}  # per open association: C-STORE outcomes, logged at its end

    def _ae(self) -> AE:
        ae = AE(ae_title=self.cfg.ae_title)
        # The limit is enforced in on_requested on open connections. pynetdicom counts threads,
        # and a connection closed before its A-ASSOCIATE-RQ leaves a thread waiting out the ACSE
        # timeout: with a small limit there, a burst of broken connections would lock out real
        # senders for acse_timeout seconds. Its limit is only a backstop against runaway threads.
        ae.maximum_associations = max(1024, self.cfg.max_associations)
        ae.maximum_pdu_size = self.cfg.max_pdu  # larger PDUs: fewer fragments to reassemble
        ae.acse_timeout = self.cfg.acse_timeout
        ae.dimse_timeout = self.cfg.dimse_timeout
        ae.network_timeout = self.cfg.network_timeout
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        """Listen on the plain port, the TLS port, or both, with the same handlers and limit."""
        handlers = [
            (evt.EVT_CONN_OPEN, self.on_conn_open),
            (evt.EVT_CONN_CLOSE, self.on_conn_close),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_RELEASED, self.on_closed, ["released"]),
            (evt.EVT_ABORTED, self.on_closed, ["aborted"]),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]
        # pydicom checks every UID and value it reads against its VR and, in its default mode, only
        # warns, which the node never shows (hccnode.log.setup): the receiving path skips the checks.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        polling.install()        # pynetdicom's loops prompt while instances arrive
        command_set.install()    # and its C-STORE responses encoded without pydicom's writer
        tcp_options.install()    # and small PDUs not held back for TCP acknowledgements
        ssl_context = tls.server_context(self.tls_cfg) if self.tls_cfg is not None else None
        if self.shared is None:
            self.shared = Listeners.open(self.cfg, self.tls_cfg, self.processes)
        self.shared.counts[self.shared.slot] = 0
        ae = self._ae()
        contexts = _SharedContexts(ae.supported_contexts)
        if self.shared.plain is not None:
            self.server = self._serve(ae, contexts, handlers, self.shared.plain, None)
            log.event("scp.listening", ae=self.cfg.ae_title, host=self.cfg.host, port=self.port, tls=False,
                      allow_list=len(self.allowed) or "any")
        if self.shared.tls is not None:
            self.tls_server = self._serve(ae, contexts, handlers, self.shared.tls, ssl_context)
            log.event("scp.listening", ae=self.cfg.ae_title, host=self.cfg.host, port=self.tls_port, tls=True,
                      mutual=self.tls_cfg.require_client_certificate, allow_list=len(self.allowed) or "any")

    def _serve(self, ae: AE, contexts: list, handlers: list, listener: socket.socket,
               ssl_context: ssl.SSLContext | None) -> ThreadedAssociationServer:
        server = ae.make_server(listener.getsockname()[:2], contexts=contexts, ssl_context=ssl_context,
                                evt_handlers=handlers, server_class=_SharedServer, shared=self.shared,
                                listener=listener, accepted=self._on_accepted)
        threading.Thread(target=server.serve_forever, name="scp-accept", daemon=True).start()
        return server

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.cfg.port

    @property
    def tls_port(self) -> int | None:
        return self.tls_server.server_address[1] if self.tls_server else None

    def stop(self) -> None:
        for server in (self.server, self.tls_server):
            if server:
                server.shutdown()
        self.server = self.tls_server = None

    # -- event handlers ------------------------------------------------------------------

    def _audit(self, event: str, actor: str, **details) -> None:
        """Record an association event; a failure to record is logged, never raised into pynetdicom."""
        try:
            audit.append(self.spool.store, event, actor, **details)
        except Exception as exc:
            log.event("audit.failed", level=logging.ERROR, audit_event=event, error=type(exc).__name__)

    def _count(self) -> None:
        """This process's open connections, for the association limit and the other processes (under _open_lock)."""
        self.shared.counts[self.shared.slot] = len(self._open) + self._accepting

    def _on_accepted(self) -> None:
        with self._open_lock:
            self._accepting += 1
            self._count()

    def on_conn_open(self, event) -> None:
        with self._open_lock:
            self._open.add(id(event.assoc))
            self._accepting = max(0, self._accepting - 1)
            self._count()

    def on_conn_close(self, event) -> None:
        with self._open_lock:
            self._open.discard(id(event.assoc))
            self._count()
            self._outcomes.pop(id(event.assoc), None)

    def on_requested(self, event) -> None:
        """Reject, before negotiation, a calling AE (or AE@host) not on the allow-list, and
        any association beyond `max_associations` open at once (transient: try again later)."""
        assoc = event.assoc
        calling = assoc.requestor.primitive.calling_ae_title.strip()
        peer = assoc.requestor.address
        n_open = sum(self.shared.counts)   # every receiver process's
        if n_open > self.cfg.max_associations:
            reason = f"association limit ({self.cfg.max_associations}) reached"
            log.event("association.rejected", level=logging.WARNING, calling_ae=calling, peer=peer, reason=reason)
            self._audit("association.rejected", f"AE:{calling}", peer=peer, reason=reason)
            assoc.acse.send_reject(status.REJECTED_TRANSIENT, status.SOURCE_PROVIDER_PRESENTATION,
                                   status.DIAG_LOCAL_LIMIT_EXCEEDED)
            assoc.kill()
            return
        if not is_allowed(self.allowed, calling, peer):
            reason = "calling AE title not on the allow-list for this host"
            log.event("association.rejected", level=logging.WARNING, calling_ae=calling, peer=peer, reason=reason)
            self._audit("association.rejected", f"AE:{calling}", peer=peer, reason=reason)
            assoc.acse.send_reject(status.REJECTED_PERMANENT, status.SOURCE_SERVICE_USER,
                                   status.DIAG_CALLING_AE_NOT_RECOGNIZED)
            assoc.kill()  # as pynetdicom does after its own rejections: stop the DUL thread

    def on_accepted(self, event) -> None:
        a = event.assoc
        log.event("association.accepted", calling_ae=a.requestor.ae_title, peer=a.requestor.address,
                  contexts=len(a.accepted_contexts))
        self._audit("association.accepted", f"AE:{a.requestor.ae_title.strip()}", peer=a.requestor.address,
                    contexts=len(a.accepted_contexts),
                    tls=isinstance(getattr(a.dul.socket, "socket", None), ssl.SSLSocket))

    def on_rejected(self, event) -> None:
        """pynetdicom's own rejections (e.g. the association limit); ours are logged in on_requested."""
        a = event.assoc
        rj = a.acceptor.primitive
        fields = dict(result=getattr(rj, "result", None), source=getattr(rj, "result_source", None),
                      diagnostic=getattr(rj, "diagnostic", None))
        log.event("association.rejected", level=logging.WARNING, calling_ae=a.requestor.ae_title, peer=a.requestor.address, **fields)
        self._audit("association.rejected", f"AE:{a.requestor.ae_title.strip()}", peer=a.requestor.address, **fields)

    def on_closed(self, event, how: str) -> None:
        """One line per association, with how many instances it stored, replaced, resent or had refused."""
        a = event.assoc
        with self._open_lock:
            outcomes = self._outcomes.pop(id(a), Counter())
        log.event(f"association.{how}", calling_ae=a.requestor.ae_title, peer=a.requestor.address,
                  **{k: outcomes[k] for k in ("stored", "replaced", "duplicate", "quarantined", "failed") if outcomes[k]})

    def on_echo(self, event) -> int:
        log.event("echo", calling_ae=event.assoc.requestor.ae_title)
        return status.SUCCESS

    def on_store(self, event):
        polling.stored(alone=len(self._open) == 1)
        req = event.request
        calling = event.assoc.requestor.ae_title.strip()
        try:
            result = self.spool.ingest(str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID),
                                       str(event.context.transfer_syntax),
                                       event.encoded_dataset(include_meta=False), calling)
        except Exception as exc:  # never answer success for what we may not have kept
            log.event("instance.failed", level=logging.ERROR, calling_ae=calling, sop=str(req.AffectedSOPInstanceUID),
                      error=type(exc).__name__, exc_info=True)
            return _status(status.OUT_OF_RESOURCES, "internal error: not stored (the node's log says where)")
        with self._open_lock:
            self._outcomes.setdefault(id(event.assoc), Counter())[result.outcome or "failed"] += 1
        if result.status == status.SUCCESS:
            return status.SUCCESS
        return _status(result.status, result.comment)


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds
