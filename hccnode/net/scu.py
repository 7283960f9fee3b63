"""The node as a DICOM client: C-ECHO, C-STORE of files as they are on disk, and Query/Retrieve
(C-FIND, C-MOVE, C-GET; Study Root).

Files are sent without decoding (pynetdicom's chunked send), in their own transfer
syntax, so an output or a forwarded instance reaches the peer byte for byte.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, _config, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from hccnode.config import Destination
from hccnode import dicom_status as status
from hccnode.net import tcp_options

_config.STORE_SEND_CHUNKED_DATASET = True
MAX_CONTEXTS = 128  # PS3.8: at most 128 presentation contexts per association


class AssociationFailed(ConnectionError):
    """The peer could not be reached, rejected or aborted the association."""


@dataclass
class SendResult:
    path: Path
    status: int | None          # None: no response (connection lost, context refused)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and status.is_success(self.status)


def _ae(calling_ae: str, timeout: float) -> AE:
    tcp_options.install()   # small PDUs not held back for TCP acknowledgements
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def _associate(ae: AE, dest: Destination, tls: ssl.SSLContext | None = None, **kwargs):
    tls_args = (tls, dest.host) if tls else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args, **kwargs)
    if assoc.is_established:
        return assoc
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        why = f"rejected (result {rj.result}, source {rj.result_source}, reason {rj.diagnostic})" if rj else "rejected"
    else:
        why = _unreachable(dest) or "aborted by peer"
    raise AssociationFailed(f"{dest}: association {why}")


def _unreachable(dest: Destination, timeout: float = 5.0) -> str | None:
    """Why a TCP connection to `dest` fails, or None if it opens (pynetdicom reports both
    a refused connection and a peer's abort as 'aborted'; an administrator needs to know which)."""
    try:
        with socket.create_connection((dest.host, dest.port), timeout=timeout):
            return None
    except OSError as exc:
        return f"failed: {exc.strerror or type(exc).__name__}".lower()


def echo(dest: Destination, calling_ae: str = "HCCNODE", timeout: float = 10.0,
         tls: ssl.SSLContext | None = None) -> int:
    """C-ECHO `dest` (over TLS with `tls`); returns the status, raises AssociationFailed if unreachable."""
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(Verification)
    assoc = _associate(ae, dest, tls)
    try:
        rsp = assoc.send_c_echo()
        if "Status" not in rsp:
            raise AssociationFailed(f"{dest}: no C-ECHO response")
        return int(rsp.Status)
    finally:
        assoc.release()


def send_files(dest: Destination, files: list[tuple[Path, str, str]], calling_ae: str = "HCCNODE",
               timeout: float = 30.0, tls: ssl.SSLContext | None = None) -> list[SendResult]:
    """C-STORE each (path, sop_class_uid, transfer_syntax) to `dest` over one association.

    Raises AssociationFailed if no association could be made; per-file problems come
    back in the results.
    """
    pairs = sorted({(sop_class, ts) for _, sop_class, ts in files})
    if len(pairs) > MAX_CONTEXTS:  # split by context, keep the results in the callers' order
        first = set(pairs[:MAX_CONTEXTS])
        idx_a = [i for i, f in enumerate(files) if (f[1], f[2]) in first]
        idx_b = [i for i, f in enumerate(files) if (f[1], f[2]) not in first]
        out: list[SendResult | None] = [None] * len(files)
        for idx in (idx_a, idx_b):
            for i, r in zip(idx, send_files(dest, [files[i] for i in idx], calling_ae, timeout, tls)):
                out[i] = r
        return out  # type: ignore[return-value]
    ae = _ae(calling_ae, timeout)
    for sop_class, ts in pairs:
        ae.add_requested_context(sop_class, [ts])
    assoc = _associate(ae, dest, tls)
    results = []
    try:
        accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
        for path, sop_class, ts in files:
            if (sop_class, ts) not in accepted:
                results.append(SendResult(path, None, f"peer refused SOP class {sop_class} in transfer syntax {ts}"))
                continue
            if not assoc.is_established:
                results.append(SendResult(path, None, "association lost"))
                continue
            try:
                rsp = assoc.send_c_store(path)
            except (OSError, ValueError) as exc:
                results.append(SendResult(path, None, f"cannot send: {exc}"))
                continue
            if "Status" not in rsp:
                results.append(SendResult(path, None, "no response (timeout or connection lost)"))
                continue
            code = int(rsp.Status)
            comment = str(rsp.get("ErrorComment", "")) if not status.is_success(code) else ""
            results.append(SendResult(path, code, comment or ("" if status.is_success(code) else f"status 0x{code:04X}")))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


# -- Query/Retrieve (PS3.4 Annex C), Study Root ------------------------------------------

class QueryFailed(RuntimeError):
    """The peer answered a C-FIND, C-MOVE or C-GET with a failure status, or not at all."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class RetrieveResult:
    """The final response of a C-MOVE or C-GET: status and sub-operation counts."""

    status: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    error: str = ""                 # the peer's Error Comment, if any

    @property
    def ok(self) -> bool:
        return self.status == status.SUCCESS


def _refuse_unaccepted(assoc, dest: Destination, model: str, what: str) -> None:
    if not any(cx.abstract_syntax == model for cx in assoc.accepted_contexts):
        assoc.release()
        raise QueryFailed(f"{dest}: the peer does not accept {what} (Study Root)")


def find(dest: Destination, identifier: Dataset, calling_ae: str = "HCCNODE", timeout: float = 30.0,
         tls: ssl.SSLContext | None = None) -> list[Dataset]:
    """C-FIND (Study Root) with `identifier`; returns the matches.

    Raises AssociationFailed if the peer cannot be reached, QueryFailed on a failure status or a
    lost association. The identifier usually holds the Patient ID: callers must not log it.
    """
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, dest, tls)
    _refuse_unaccepted(assoc, dest, StudyRootQueryRetrieveInformationModelFind, "C-FIND")
    matches: list[Dataset] = []
    try:
        for rsp, ident in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if "Status" not in rsp:
                raise QueryFailed(f"{dest}: C-FIND: no response (timeout or connection lost)")
            code = int(rsp.Status)
            if status.is_pending(code):
                if ident is not None:
                    matches.append(ident)
                continue
            if code != status.SUCCESS:
                raise QueryFailed(f"{dest}: C-FIND failed: status 0x{code:04X} ({status.qr_meaning(code)})"
                                  + _comment(rsp), code)
            return matches
        raise QueryFailed(f"{dest}: C-FIND: association ended without a final response")
    finally:
        if assoc.is_established:
            assoc.release()


def _comment(rsp: Dataset) -> str:
    text = str(rsp.get("ErrorComment", "") or "").strip()
    return f": {text}" if text else ""


def _final(rsp_iter, dest: Destination, what: str) -> RetrieveResult:
    """Read C-MOVE/C-GET responses up to the final one."""
    for rsp, _ in rsp_iter:
        if "Status" not in rsp:
            raise QueryFailed(f"{dest}: {what}: no response (timeout or connection lost)")
        code = int(rsp.Status)
        if status.is_pending(code):
            continue
        return RetrieveResult(code, int(rsp.get("NumberOfCompletedSuboperations", 0) or 0),
                              int(rsp.get("NumberOfFailedSuboperations", 0) or 0),
                              int(rsp.get("NumberOfWarningSuboperations", 0) or 0),
                              _comment(rsp).lstrip(": "))
    raise QueryFailed(f"{dest}: {what}: association ended without a final response")


def move(dest: Destination, identifier: Dataset, move_destination: str, calling_ae: str = "HCCNODE",
         timeout: float = 120.0, tls: ssl.SSLContext | None = None) -> RetrieveResult:
    """C-MOVE (Study Root) of what `identifier` names to the AE title `move_destination`.

    The peer opens its own association to `move_destination`, so it must know that AE title's
    host and port. Returns the final status and counts; raises AssociationFailed or QueryFailed.
    """
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, dest, tls)
    _refuse_unaccepted(assoc, dest, StudyRootQueryRetrieveInformationModelMove, "C-MOVE")
    try:
        return _final(assoc.send_c_move(identifier, move_destination, StudyRootQueryRetrieveInformationModelMove),
                      dest, "C-MOVE")
    finally:
        if assoc.is_established:
            assoc.release()


def get(dest: Destination, identifier: Dataset, on_store, calling_ae: str = "HCCNODE", timeout: float = 120.0,
        tls: ssl.SSLContext | None = None) -> RetrieveResult:
    """C-GET (Study Root): the peer sends the instances back over this association.

    `on_store(event)` is called for each C-STORE sub-operation and returns its status (as an SCP's
    C-STORE handler does). Storage contexts: pynetdicom's common storage SOP classes (120, so that
    with the C-GET context they fit the 128 of one association) in uncompressed transfer syntaxes,
    with the SCP role; a peer holding compressed data transcodes it or fails that sub-operation.
    """
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for cx in StoragePresentationContexts[:MAX_CONTEXTS - 1]:
        ae.add_requested_context(cx.abstract_syntax)
        roles.append(build_role(cx.abstract_syntax, scp_role=True))
    assoc = _associate(ae, dest, tls, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    _refuse_unaccepted(assoc, dest, StudyRootQueryRetrieveInformationModelGet, "C-GET")
    try:
        return _final(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet), dest, "C-GET")
    finally:
        if assoc.is_established:
            assoc.release()
