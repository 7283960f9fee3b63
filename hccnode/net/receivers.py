"""More receiver processes for one node (`[node] receiver_processes`): the DICOM listener in
several processes, so that concurrent associations use more than one core (the interpreter lock
holds the threads of one process to one).

The node's own process opens the listening sockets (hccnode.net.scp.Listeners) and starts the
others (spawned: the node has threads, which a fork would copy half-way); each accepts from the
same sockets, so an association is served whole by the process that accepts it, and each keeps the
spool's guarantees on its own (its own temporary directory spool/.tmp/<host>.<pid>, its own
database connections, the node.lock share). A process that dies is started again; one left without
its parent (kill -9 of the node) notices within a second and stops.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading

from hccnode import log
from hccnode.config import Config
from hccnode.net.scp import Listeners, StorageSCP
from hccnode.store import running
from hccnode.store.db import Store
from hccnode.store.spool import Spool

POLL_SECONDS = 1.0


def serve(cfg: Config, shared: Listeners, parent: int) -> None:
    """A receiver process: serve from `shared` until SIGTERM, SIGINT, or its parent is gone."""
    log.setup(cfg.log.level, cfg.log.file)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    with running.serving(cfg.data_dir):
        spool = Spool(Store.of(cfg))
        cleaned = spool.clean_tmp()   # only files of dead processes: never a live receiver's
        scp = StorageSCP(cfg.node, spool, cfg.tls, shared=shared)
        scp.start()
        log.event("receiver.started", pid=os.getpid(), slot=shared.slot, unacknowledged_tmp_removed=cleaned)
        try:
            while not done.wait(POLL_SECONDS) and os.getppid() == parent:
                pass
        finally:
            scp.stop()
            log.event("receiver.stopped", pid=os.getpid(), slot=shared.slot)


class ReceiverProcesses:
    """The node's receiver processes besides its own (slots 1 .. n-1 of `shared`), kept running."""

    def __init__(self, cfg: Config, shared: Listeners, n: int, stop: threading.Event):
        self.cfg, self.shared, self.n, self.stop_event = cfg, shared, n, stop
        self._ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, multiprocessing.Process] = {}
        self._thread = threading.Thread(target=self._watch, name="receivers", daemon=True)

    def _spawn(self, slot: int) -> None:
        p = self._ctx.Process(target=serve, args=(self.cfg, self.shared.for_slot(slot), os.getpid()),
                              name=f"hccnode-receiver-{slot}", daemon=False)
        p.start()
        self.procs[slot] = p

    def start(self) -> None:
        for slot in range(1, self.n):
            self._spawn(slot)
        self._thread.start()

    def _watch(self) -> None:
        while not self.stop_event.wait(POLL_SECONDS):
            for slot, p in list(self.procs.items()):
                if not p.is_alive() and not self.stop_event.is_set():
                    log.event("receiver.exited", level=logging.ERROR, pid=p.pid, slot=slot, exit_code=p.exitcode)
                    self.shared.counts[slot] = 0   # its connections closed with it
                    self._spawn(slot)

    def stop(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
        for p in self.procs.values():
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join(timeout)
