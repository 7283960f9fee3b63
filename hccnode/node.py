"""One process runs the node, or one role of it (`[node] role`, `hccnode serve --role`):

- receiver: the DICOM listener (SCP, plain and TLS; in `[node] receiver_processes` processes sharing
  its ports, hccnode.net.receivers) and the HL7 (MLLP) listener: everything that accepts data from
  outside and must answer it at once;
- worker: the stable-study watcher and the analysis workers (the queue's producer from the index,
  and its consumers);
- forwarder: the outbox sender;
- all: the three in one process (the default).

The status page runs in every role: it reads the shared database, so each process shows the whole
site, and each host's supervisor can ask its own process for /health. The roles share nothing but
the database and the data directory (spool, outputs, secret.key), so hosts can run them apart.
"""

from __future__ import annotations

import signal
import threading
from contextlib import ExitStack

from hccnode import __version__, log
from hccnode.config import Config
from hccnode.labs import requeue
from hccnode.labs.mllp import MllpListener
from hccnode.net.forward import Forwarder, client_tls
from hccnode.net.receivers import ReceiverProcesses
from hccnode.net.scp import StorageSCP
from hccnode.status.server import StatusServer
from hccnode.store import audit, running
from hccnode.store.db import Store
from hccnode.store.spool import Spool
from hccnode.worker import Watcher, WorkerPool

PARTS = {"receiver": {"receiver"}, "worker": {"worker"}, "forwarder": {"forwarder"},
         "all": {"receiver", "worker", "forwarder"}}


class Node:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.role = cfg.node.role
        parts = PARTS[self.role]
        self.stop_event = threading.Event()
        self.store = Store.of(cfg)
        self.spool = Spool(self.store)
        receiver = "receiver" in parts
        n = cfg.node.receiver_processes
        self.scp = StorageSCP(cfg.node, self.spool, cfg.tls, processes=n) if receiver else None
        self.receivers: ReceiverProcesses | None = None   # the other n - 1, once listening
        self.mllp = (MllpListener.from_config(cfg, self.store, on_stored=self.on_labs)
                     if receiver and cfg.hl7.enabled else None)
        self.workers = WorkerPool(cfg, self.stop_event) if "worker" in parts else None
        self.watcher = Watcher(cfg, self.stop_event) if "worker" in parts else None
        self.forwarder = (Forwarder(cfg.data_dir, cfg.forward, self.stop_event, client_tls(cfg), cfg.store.url)
                          if "forwarder" in parts else None)
        self.status = StatusServer(cfg) if cfg.status.enabled else None
        self._held = ExitStack()  # the node.lock share, released at stop

    def on_labs(self, stored) -> None:
        """A lab result arrived: re-analyse the studies whose matched value it changes."""
        requeue.queue_jobs(self.store, stored.changes, self.cfg.worker.max_attempts)

    def start(self) -> None:
        self._held.enter_context(running.serving(self.cfg.data_dir))
        # Only a receiver removes stale temporary files (spool/.tmp/<host>.<pid>, never a live one).
        cleaned = self.spool.clean_tmp() if self.scp else 0
        log.event("node.starting", version=__version__, role=self.role, data_dir=self.cfg.data_dir,
                  config=self.cfg.source, unacknowledged_tmp_removed=cleaned)
        audit.record_config(self.store, self.cfg)
        audit.append(self.store, "node.started", "node", version=__version__, role=self.role,
                     data_dir=str(self.cfg.data_dir), unacknowledged_tmp_removed=cleaned)
        h = audit.head(self.store)
        log.event("audit.head", head=f"{h[0]}:{h[1]}" if h else None)
        for part in (self.scp, self.mllp, self.watcher, self.workers, self.forwarder, self.status):
            if part:
                part.start()
        if self.scp and self.cfg.node.receiver_processes > 1:
            self.receivers = ReceiverProcesses(self.cfg, self.scp.shared, self.cfg.node.receiver_processes,
                                               self.stop_event)
            self.receivers.start()
        log.event("node.ready", role=self.role, ae=self.cfg.node.ae_title,
                  port=self.scp.port if self.scp and self.scp.server else None,
                  tls_port=self.scp.tls_port if self.scp else None, workers=self.workers.n if self.workers else 0,
                  receiver_processes=self.cfg.node.receiver_processes if self.scp else 0)

    def stop(self) -> None:
        log.event("node.stopping", role=self.role)
        self.stop_event.set()
        for part in (self.status, self.scp, self.mllp, self.receivers):
            if part:
                part.stop()
        for part, timeout in ((self.watcher, 5), (self.forwarder, 10), (self.workers, 10)):
            if part:
                part.join(timeout)
        audit.append(self.store, "node.stopped", "node", role=self.role)
        self._held.close()
        log.event("node.stopped", role=self.role)

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
