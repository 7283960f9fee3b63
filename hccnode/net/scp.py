"""The Storage SCP: accepts associations, answers C-ECHO, and keeps C-STORE datasets.

The C-STORE handler does only what durability needs (`Spool.ingest`: write the bytes as
received, fsync, index) and returns; analysis happens later from the job queue, so the
sender is never kept waiting on it.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from collections import Counter

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from hccnode import log
from hccnode.config import NodeSection, TLSSection
from hccnode import dicom_status as status
from hccnode.net import tls
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


class StorageSCP:
    """Wires pynetdicom's AE to the spool; `start()` returns once listening."""

    def __init__(self, cfg: NodeSection, spool: Spool, tls_cfg: TLSSection | None = None):
        self.cfg = cfg
        self.tls_cfg = tls_cfg if tls_cfg and tls_cfg.enabled else None
        self.spool = spool
        self.allowed = parse_allowed(cfg.allowed)
        self.server: ThreadedAssociationServer | None = None       # plain listener
        self.tls_server: ThreadedAssociationServer | None = None   # TLS listener
        self._open: set[int] = set()          # connections now open (ids of their associations)
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
        ae = self._ae()
        if self.tls_cfg is None or self.tls_cfg.keep_plain_listener:
            self.server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
            log.event("scp.listening", ae=self.cfg.ae_title, host=self.cfg.host, port=self.port, tls=False,
                      allow_list=len(self.allowed) or "any")
        if self.tls_cfg is not None:
            self.tls_server = ae.start_server((self.cfg.host, self.tls_cfg.port), block=False, evt_handlers=handlers,
                                              ssl_context=tls.server_context(self.tls_cfg))
            log.event("scp.listening", ae=self.cfg.ae_title, host=self.cfg.host, port=self.tls_port, tls=True,
                      mutual=self.tls_cfg.require_client_certificate, allow_list=len(self.allowed) or "any")

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
            log.event("audit.failed", level=40, audit_event=event, error=type(exc).__name__)

    def on_conn_open(self, event) -> None:
        with self._open_lock:
            self._open.add(id(event.assoc))

    def on_conn_close(self, event) -> None:
        with self._open_lock:
            self._open.discard(id(event.assoc))
            self._outcomes.pop(id(event.assoc), None)

    def on_requested(self, event) -> None:
        """Reject, before negotiation, a calling AE (or AE@host) not on the allow-list, and
        any association beyond `max_associations` open at once (transient: try again later)."""
        assoc = event.assoc
        calling = assoc.requestor.primitive.calling_ae_title.strip()
        peer = assoc.requestor.address
        with self._open_lock:
            n_open = len(self._open)
        if n_open > self.cfg.max_associations:
            reason = f"association limit ({self.cfg.max_associations}) reached"
            log.event("association.rejected", level=30, calling_ae=calling, peer=peer, reason=reason)
            self._audit("association.rejected", f"AE:{calling}", peer=peer, reason=reason)
            assoc.acse.send_reject(status.REJECTED_TRANSIENT, status.SOURCE_PROVIDER_PRESENTATION,
                                   status.DIAG_LOCAL_LIMIT_EXCEEDED)
            assoc.kill()
            return
        if not is_allowed(self.allowed, calling, peer):
            reason = "calling AE title not on the allow-list for this host"
            log.event("association.rejected", level=30, calling_ae=calling, peer=peer, reason=reason)
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
        log.event("association.rejected", level=30, calling_ae=a.requestor.ae_title, peer=a.requestor.address, **fields)
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
        req = event.request
        calling = event.assoc.requestor.ae_title.strip()
        try:
            result = self.spool.ingest(str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID),
                                       str(event.context.transfer_syntax),
                                       event.encoded_dataset(include_meta=False), calling)
        except Exception as exc:  # never answer success for what we may not have kept
            log.event("instance.failed", level=40, calling_ae=calling, sop=str(req.AffectedSOPInstanceUID),
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
