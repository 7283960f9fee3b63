"""The node as a DICOM client: C-ECHO and C-STORE of files as they are on disk.

Files are sent without decoding (pynetdicom's chunked send), in their own transfer
syntax, so an output or a forwarded instance reaches the peer byte for byte.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from hccnode.config import Destination
from hccnode.net import status

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
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def _associate(ae: AE, dest: Destination, tls: ssl.SSLContext | None = None):
    tls_args = (tls, dest.host) if tls else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
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
