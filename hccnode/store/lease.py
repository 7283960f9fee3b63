"""Who holds a lease: a process identity that outlives the process in the database, so a
restarted node can tell a lease of a dead process (take it back now) from one of a live
process (wait for it to expire).

The identity is host, PID and the process's start time (Linux: /proc/PID/stat field 22),
so a PID reused by a later process does not keep a dead holder's lease alive.
"""

from __future__ import annotations

import os
import socket


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 2 (the command) is in parentheses and may contain spaces; then state (3) ... start (22).
    fields = stat.rsplit(b")", 1)[1].split()
    return fields[0].decode(), fields[19].decode()


def owner_id() -> str:
    """This process: 'host:pid:start'."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return f"{socket.gethostname()}:{pid}:{stat[1] if stat else ''}"


def owner_alive(owner: str | None) -> bool:
    """False only when `owner` is a process of this host that is no longer running; a holder on
    another host (or an identity we cannot read) counts as alive, and its lease expires by time.
    A suffix after '/' names a thread of the process (e.g. a worker) and is not part of the test."""
    if not owner:
        return True
    host, _, rest = owner.split("/", 1)[0].partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return True
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    return state != "Z" and (not start or started == start)  # a zombie, or the PID of a later process: dead


def dead_holders(conn, table: str, state: str) -> list[str]:
    """Lease holders of `table` rows in `state` whose process is gone: their rows can be taken back
    at once instead of waiting out the lease."""
    owners = [r[0] for r in conn.execute(
        f"SELECT DISTINCT lease_owner FROM {table} WHERE state = ? AND lease_owner IS NOT NULL", (state,))]
    return [o for o in owners if not owner_alive(o)]
