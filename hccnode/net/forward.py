"""The forwarder: drains the outbox to its destinations with the C-STORE SCU, or STOW-RS for a
DICOMweb base URL (hccnode.net.stow); same leases, retries and backoff for both."""

from __future__ import annotations

import logging
import ssl
import threading

from hccnode import log
from hccnode.config import Config, ForwardSection, is_dicomweb, parse_destination
from hccnode.net import scu, stow, tls
from hccnode.store import outbox
from hccnode.store.db import Store


def drain_once(store: Store, cfg: ForwardSection, ids: list[int] | None = None,
               tls_ctx: ssl.SSLContext | None = None) -> int:
    """Send every due outbox row (or only `ids`) once, over TLS with `tls_ctx`; returns how many rows were tried."""
    tried = 0
    for dest_text, items in outbox.claim_due(store, ids=ids).items():
        tried += len(items)
        retry = dict(base=cfg.retry_base_seconds, cap=cfg.retry_max_seconds, max_attempts=cfg.max_attempts)
        missing = [i for i in items if not i.path.exists()]
        for item in missing:  # nothing to retry with: fail at once, and say so
            outbox.mark_failed(store, item, f"file missing: {item.path}", None, **{**retry, "max_attempts": 0})
        items = [i for i in items if i.path.exists()]
        if not items:
            continue
        if is_dicomweb(dest_text):
            results = stow.send_files(dest_text, cfg.dicomweb_options(dest_text), [i.path for i in items])
        else:
            try:
                results = scu.send_files(parse_destination(dest_text),
                                         [(i.path, i.sop_class_uid, i.transfer_syntax) for i in items],
                                         calling_ae=cfg.ae_title, tls=tls_ctx)
            except scu.AssociationFailed as exc:
                results = [scu.SendResult(i.path, None, str(exc)) for i in items]
        for item, res in zip(items, results):
            if res.ok:
                outbox.mark_sent(store, item, res.status)
            else:
                outbox.mark_failed(store, item, res.error, res.status, **retry)
    return tried


class Forwarder:
    """`[forward] senders` background loops, each: send what is due (the rows it leased, one
    association per destination), then wait `poll_seconds`. Several, so that an output queued
    while a large one is being sent (the SR and SEG behind a 200-frame ECV map) goes out on its own
    association at once; a row is leased by one loop, so it is sent once."""

    def __init__(self, store_dir, cfg: ForwardSection, stop: threading.Event, tls_ctx: ssl.SSLContext | None = None,
                 store_url: str = ""):
        self.store_dir, self.cfg, self.stop, self.tls_ctx, self.store_url = store_dir, cfg, stop, tls_ctx, store_url
        self.threads = [threading.Thread(target=self._run, name=f"forwarder-{i}", daemon=True)
                        for i in range(max(1, cfg.senders))]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            t.join(timeout)

    def _run(self) -> None:
        store = Store(self.store_dir, url=self.store_url)
        while not self.stop.is_set():
            try:
                tried = drain_once(store, self.cfg, tls_ctx=self.tls_ctx)
            except Exception:
                log.event("forwarder.error", level=logging.ERROR, exc_info=True)
                tried = 0
            if not tried:
                self.stop.wait(self.cfg.poll_seconds)
        store.close()


def client_tls(cfg: Config) -> ssl.SSLContext | None:
    """The TLS context for sending, when `forward.tls` is on."""
    return tls.client_context(cfg.tls) if cfg.forward.tls else None
