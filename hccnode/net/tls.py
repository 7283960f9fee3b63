"""TLS contexts for DICOM over TLS (PS3.15 Annex B.9; BCP 195: TLS 1.2 or newer)."""

from __future__ import annotations

import ssl
from pathlib import Path

from hccnode.config import TLSSection


def _path(p: str) -> str:
    return str(Path(p).expanduser())


def server_context(cfg: TLSSection) -> ssl.SSLContext:
    """For the listener: our certificate; peers' certificates required when mutual TLS is on."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(_path(cfg.certificate), _path(cfg.private_key))
    if cfg.ca_certificates:
        ctx.load_verify_locations(_path(cfg.ca_certificates))
    ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_certificate else ssl.CERT_NONE
    return ctx


def client_context(cfg: TLSSection) -> ssl.SSLContext:
    """For sending: verify the peer (CA bundle and host name); present our certificate if we have one."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                     cafile=_path(cfg.ca_certificates) if cfg.ca_certificates else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.certificate and cfg.private_key:
        ctx.load_cert_chain(_path(cfg.certificate), _path(cfg.private_key))
    return ctx
