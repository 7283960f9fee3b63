"""Is a node serving from this data directory? Every `hccnode serve` process holds a shared lock
on `DATA_DIR/node.lock` while it runs; a maintenance command that needs the node stopped (`hccnode
store migrate`) takes the lock exclusively and refuses when it cannot.

An flock(2) lock is released by the kernel when its holder exits, also on kill -9, so a crashed
node never leaves a stale "running" mark. On NFS, Linux clients map flock to NFS byte-range locks,
so a node on another host that mounts the same data directory counts too.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = "node.lock"


class NodeRunning(RuntimeError):
    """A node serves from the data directory; the message says so and what to do."""


def _open(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    return os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)


@contextmanager
def serving(data_dir: str | os.PathLike) -> Iterator[None]:
    """Held by a node process while it serves (shared: the roles of a site run side by side)."""
    fd = _open(Path(data_dir))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@contextmanager
def stopped(data_dir: str | os.PathLike) -> Iterator[None]:
    """Held while the node must not run: NodeRunning when a node serves from `data_dir` now; a node
    started meanwhile waits for the lock before it serves."""
    fd = _open(Path(data_dir))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeRunning(f"a node is serving from {data_dir} ({LOCK_FILE} is held): stop every"
                              " `hccnode serve` on this data directory first") from None
        yield
    finally:
        os.close(fd)
