"""One process runs the node: SCP, stable-study watcher, workers and forwarder."""

from __future__ import annotations

import signal
import threading

from hccnode import __version__, log
from hccnode.config import Config
from hccnode.labs import requeue
from hccnode.labs.mllp import MllpListener
from hccnode.net.forward import Forwarder, client_tls
from hccnode.net.scp import StorageSCP
from hccnode.status.server import StatusServer
from hccnode.store import audit
from hccnode.store.db import Store
from hccnode.store.spool import Spool
from hccnode.worker import Watcher, WorkerPool


class Node:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.store = Store.of(cfg)
        self.spool = Spool(self.store)
        self.scp = StorageSCP(cfg.node, self.spool, cfg.tls)
        self.workers = WorkerPool(cfg, self.stop_event)
        self.watcher = Watcher(cfg, self.stop_event)
        self.forwarder = Forwarder(cfg.data_dir, cfg.forward, self.stop_event, client_tls(cfg), cfg.store.url)
        self.mllp = MllpListener.from_config(cfg, self.store, on_stored=self.on_labs) if cfg.hl7.enabled else None
        self.status = StatusServer(cfg) if cfg.status.enabled else None

    def on_labs(self, stored) -> None:
        """A lab result arrived: re-analyse the studies whose matched value it changes."""
        requeue.queue_jobs(self.store, stored.changes, self.cfg.worker.max_attempts)

    def start(self) -> None:
        cleaned = self.spool.clean_tmp()
        log.event("node.starting", version=__version__, data_dir=self.cfg.data_dir, config=self.cfg.source,
                  unacknowledged_tmp_removed=cleaned)
        audit.record_config(self.store, self.cfg)
        audit.append(self.store, "node.started", "node", version=__version__, data_dir=str(self.cfg.data_dir),
                     unacknowledged_tmp_removed=cleaned)
        h = audit.head(self.store)
        log.event("audit.head", head=f"{h[0]}:{h[1]}" if h else None)
        self.scp.start()
        if self.mllp:
            self.mllp.start()
        self.watcher.start()
        self.workers.start()
        self.forwarder.start()
        if self.status:
            self.status.start()
        log.event("node.ready", ae=self.cfg.node.ae_title, port=self.scp.port if self.scp.server else None,
                  tls_port=self.scp.tls_port, workers=self.workers.n)

    def stop(self) -> None:
        log.event("node.stopping")
        self.stop_event.set()
        if self.status:
            self.status.stop()
        self.scp.stop()
        if self.mllp:
            self.mllp.stop()
        self.watcher.join(5)
        self.forwarder.join(10)
        self.workers.join(10)
        audit.append(self.store, "node.stopped", "node")
        log.event("node.stopped")

    def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()
