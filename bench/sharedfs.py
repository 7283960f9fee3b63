"""Shared-filesystem benchmark (issue 19): the data directory on a network filesystem against the
local disk, in one run, and the per-study costs a capacity note needs.

Several hosts share one data directory (README, "The data directory is mounted by every host").
This machine's kernel has no NFS client, so a loopback sshfs stands in for it: FUSE over SFTP to an
sshd on 127.0.0.1. It shows the cost of a user-space filesystem and of a synchronous request per
metadata operation; it does not show real network latency (loopback round trips are tens of µs)
nor NFS's close-to-open semantics, and the README says sshfs is not fit for production.

Needs: root (the sshd and the FUSE mount), /dev/fuse, the Debian packages `sshfs` and
`openssh-server` (not in `make system-deps`: no test needs them), `strace` (for the fsync counts),
and, as bench/scale.py, PostgreSQL 15's server binaries and dcmtk's storescu.

1. The mount. An sshd on a free loopback port (a throwaway host key and user key in a temporary
   directory, root login by key only) runs the SFTP server through a wrapper that logs its requests
   at a level chosen per session. sshfs runs with its default options (no `-o workaround=rename`,
   which would turn a refused rename into unlink-and-rename, not atomic). A probe session with
   `-o sshfs_debug` lists the SFTP extensions the server offers (sshfs uses posix-rename@openssh.com
   and fsync@openssh.com when offered), then writes, fsyncs, renames over an existing file and
   fsyncs the directory, and the server's log tells which of these reached the server.
2. Rates, PostgreSQL as on several hosts (fsync off: the filesystem's work, not the database's),
   each on the local disk and then on the mount: ingest with 1 and 4 receivers (instances/s),
   analysis with 1 and 2 worker processes (jobs/min), and the ratio mount / local.
3. Costs, one untimed pass on the mount: the receiver and the worker traced by strace (fsync and
   rename calls), the SFTP requests that reached the server, PostgreSQL's rows written, commits and
   WAL bytes (pg_stat_user_tables, pg_stat_database, pg_stat_wal), and the bytes of the spool and
   the outputs, per instance and per study.

    python bench/sharedfs.py [--studies 6] [--slices 8] [--matrix 64]
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import (NodeProcess, analysis_rate, arguments, free_port, ingest_rate, jobs_done, make_studies,  # noqa: E402
                   node, send, start, wait_until)
from pg_support import missing, start_server  # noqa: E402

SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
FSYNC_CALLS = ("fsync", "fdatasync")
RENAME_CALLS = ("rename", "renameat", "renameat2")


def _missing() -> str | None:
    for tool in ("sshfs", "ssh-keygen", "strace", "storescu"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not Path("/usr/sbin/sshd").exists() or not SFTP_SERVER.exists():
        return "openssh-server not installed"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse"
    if os.geteuid() != 0:
        return "run as root (sshd, FUSE mount)"
    return missing()


@dataclass
class Sshd:
    dir: Path
    port: int
    proc: subprocess.Popen

    @property
    def sftp_log(self) -> Path:
        return self.dir / "sftp.log"

    def log_level(self, level: str) -> None:
        """The SFTP server's log level for the sessions opened from now on."""
        (self.dir / "sftp-level").write_text(level)


@contextmanager
def sshd(tmp: Path) -> Iterator[Sshd]:
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / key)], check=True)
    (tmp / "authorized_keys").write_text((tmp / "user_key.pub").read_text())
    (tmp / "authorized_keys").chmod(0o600)
    wrapper = tmp / "sftp-server"
    wrapper.write_text(f'#!/bin/sh\nexec {SFTP_SERVER} -e -l "$(cat {tmp}/sftp-level)" 2>>{tmp}/sftp.log\n')
    wrapper.chmod(0o700)
    port = free_port()
    (tmp / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {tmp}/host_key\nAuthorizedKeysFile {tmp}/authorized_keys\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"UsePAM no\nStrictModes no\nSubsystem sftp {wrapper}\n")
    Path("/run/sshd").mkdir(exist_ok=True)   # sshd's privilege separation directory
    server = Sshd(tmp, port, subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(tmp / "sshd_config")],
                                              stderr=open(tmp / "sshd.log", "ab")))
    server.log_level("ERROR")

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return server.proc.poll() is not None
    try:
        wait_until(up, 30, what="sshd")
        if server.proc.poll() is not None:
            raise RuntimeError(f"sshd did not start: {(tmp / 'sshd.log').read_text()[-1000:]}")
        yield server
    finally:
        server.proc.terminate()
        server.proc.wait(10)


@contextmanager
def sshfs(server: Sshd, remote: Path, at: Path, *options: str) -> Iterator[Path]:
    """`remote` (a directory of the sshd's host) mounted at `at`; sshfs's stderr in at.log."""
    at.mkdir(exist_ok=True)
    log = at.with_suffix(".log")
    proc = subprocess.Popen(
        ["sshfs", "-f", "-p", str(server.port), "-o", f"IdentityFile={server.dir}/user_key,BatchMode=yes,"
         "StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null", *options, f"root@127.0.0.1:{remote}", str(at)],
        stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    try:
        wait_until(lambda: os.path.ismount(at) or proc.poll() is not None, 30, what="sshfs mount")
        if proc.poll() is not None:
            raise RuntimeError(f"sshfs failed: {log.read_text()[-1000:]}")
        yield at
    finally:
        subprocess.run([shutil.which("fusermount3") or "fusermount", "-u", str(at)], check=False)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _requests(server: Sshd) -> int:
    """SFTP requests logged so far (the server logs each at DEBUG3)."""
    return len(re.findall(r"debug3: request \d+:", server.sftp_log.read_text(errors="replace")))


def probe(server: Sshd, export: Path, tmp: Path) -> list[str]:
    """What the mount guarantees, as lines to print (see the module docstring)."""
    server.log_level("DEBUG3")
    lines = []
    with sshfs(server, export, tmp / "probe", "-o", "sshfs_debug") as m:
        offered = re.findall(r"Extension: (\S+)", m.with_suffix(".log").read_text())
        for ext in ("posix-rename@openssh.com", "fsync@openssh.com"):
            lines.append(f"server offers {ext}: {'yes' if ext in offered else 'NO'}")
        d = m / "probe" / "dir"
        d.mkdir(parents=True)
        (d / "old").write_bytes(b"old")
        fd = os.open(m / "probe" / "new.part", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, b"new")
        os.fsync(fd)
        os.close(fd)
        fsynced = re.search(r"request \d+: fsync", server.sftp_log.read_text(errors="replace"))
        lines.append(f"fsync of a file: returns 0, sends fsync@openssh.com: {'yes' if fsynced else 'NO'}")
        os.rename(m / "probe" / "new.part", d / "old")
        renamed = "posix-rename old" in server.sftp_log.read_text(errors="replace")
        lines.append(f"rename over an existing file: {(d / 'old').read_bytes() == b'new'} "
                     f"(posix-rename@openssh.com: {'yes' if renamed else 'NO'})")
        time.sleep(0.2)
        n = _requests(server)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
            result = "returns 0"
        except OSError as exc:
            result = f"fails: {exc.strerror}"
        finally:
            os.close(fd)
        time.sleep(0.2)
        lines.append(f"fsync of a directory: {result}, SFTP requests sent: {_requests(server) - n}")
    server.log_level("ERROR")
    return lines


def _family(pid: int) -> set[int]:
    """`pid` and its descendants (a worker node's process pool is started before it is ready)."""
    family = {pid}
    for _ in range(8):
        parents = {}
        for d in os.listdir("/proc"):
            try:
                parents[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (ValueError, OSError, IndexError):
                continue
        grown = family | {p for p, parent in parents.items() if parent in family}
        if grown == family:
            break
        family = grown
    return family


def _strace(pid: int, out: Path) -> subprocess.Popen:
    """strace counting fsync and rename calls of `pid`'s threads, its descendants' and those they start."""
    tids = [f"-p{t}" for p in _family(pid) for t in os.listdir(f"/proc/{p}/task")]
    p = subprocess.Popen(["strace", "-f", "-c", "-e", f"trace={','.join(FSYNC_CALLS + RENAME_CALLS)}", "-o", str(out),
                          *tids], stderr=subprocess.DEVNULL)
    time.sleep(1.0)   # attached
    return p


def _calls(p: subprocess.Popen, out: Path) -> dict[str, int]:
    p.send_signal(signal.SIGINT)
    p.wait(60)
    calls = {}
    for line in out.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[-1] in FSYNC_CALLS + RENAME_CALLS and f[3].isdigit():
            calls[f[-1]] = int(f[3])
    return calls


def _pg_counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        rows, = c.execute("SELECT COALESCE(SUM(n_tup_ins), 0), COALESCE(SUM(n_tup_upd), 0),"
                          " COALESCE(SUM(n_tup_del), 0) FROM pg_stat_user_tables").fetchall()
        commits, = c.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").fetchone()
        wal, = c.execute("SELECT wal_bytes FROM pg_stat_wal").fetchone()
    return {"rows inserted": int(rows[0]), "rows updated": int(rows[1]), "rows deleted": int(rows[2]),
            "transactions (idle polls too)": int(commits), "WAL bytes": int(wal)}


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def costs(work: Path, mount: Path, server: Sshd, url: str, files: list[str], studies: int) -> list[str]:
    """One untimed pass on the mount (the module docstring, 3.); lines to print."""
    data = mount / "costs-data"
    lines = []

    def phase(name: str, n: NodeProcess, act, per: int, unit: str) -> None:
        before, requests = _pg_counts(url), _requests(server)
        trace = _strace(n.proc.pid, work / f"{name}.strace")
        act()
        calls = _calls(trace, work / f"{name}.strace")
        n.stop()
        time.sleep(1.0)   # the server's statistics of the closed sessions
        after = _pg_counts(url)
        per_unit = {k: (after[k] - before[k]) / per for k in after}
        lines.append(f"{name}, per {unit}: " + ", ".join(
            [f"{k} {sum(calls.get(c, 0) for c in cs) / per:.1f}" for k, cs in (("fsync calls", FSYNC_CALLS),
                                                                               ("renames", RENAME_CALLS))]
            + [f"SFTP requests {(_requests(server) - requests) / per:.1f}"]
            + [f"{k} {v:.1f}" if k != "WAL bytes" else f"{k} {v:.0f}" for k, v in per_unit.items()]))

    receiver = start(node(work, "costs-receiver", data, url, study={"stable_seconds": 3600.0}), "receiver")
    phase("ingest", receiver, lambda: send([receiver], files), len(files), "instance")
    spool = _bytes(data / "spool")
    worker = start(node(work, "costs-worker", data, url, study={"stable_seconds": 3.0},
                        worker={"processes": 1, "lease_seconds": 60.0}), "worker")
    phase("analysis", worker, lambda: jobs_done(worker, "costs", studies), studies, "study")
    lines.append(f"bytes per study: spool {spool / studies:.0f} ({spool / len(files):.0f} per instance), "
                 f"outputs {_bytes(data / 'outputs') / studies:.0f}")
    return lines


def compare(what: str, unit: str, rate, local: Path, mount: Path) -> None:
    """`rate(tag, data_root)` on the local disk and on the mount, in the order local, mount, mount,
    local (a load that drifts during the run weighs on both alike); prints the rates and the ratio."""
    rates: dict[str, list[float]] = {"local": [], "sshfs": []}
    for i, where in enumerate(("local", "sshfs", "sshfs", "local")):
        rates[where].append(rate(f"{where}{i}", local if where == "local" else mount))
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    print(f"{what}: local {' '.join(f'{x:.1f}' for x in rates['local'])}, sshfs "
          f"{' '.join(f'{x:.1f}' for x in rates['sshfs'])} {unit}; sshfs/local {mean['sshfs'] / mean['local']:.2f};"
          f" load {os.getloadavg()[0]:.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__.splitlines()[0], workers="1,2").parse_args(argv)
    problem = _missing()
    if problem:
        print(f"sharedfs: {problem}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="hccnode-sharedfs-"))
    export = work / "export"
    export.mkdir()
    db = start_server(free_port)
    try:
        (work / "sshd").mkdir()
        with sshd(work / "sshd") as server:
            for line in probe(server, export, work):
                print(f"mount     {line}", flush=True)
            files = make_studies(work, args.studies, args.slices, args.matrix)
            print(f"{args.studies} studies, {len(files)} instances ({args.slices} slices of {args.matrix}² per phase);"
                  f" load average {os.getloadavg()[0]:.1f}", flush=True)
            with sshfs(server, export, work / "mnt") as mnt:
                for r in map(int, args.receivers.split(",")):
                    compare(f"ingest    {r} receiver(s)", "instances/s", lambda tag, root: ingest_rate(
                        work, f"i-{tag}-{r}", db.url(db.create_database()), files, r, data_root=root), work, mnt)
                for w in map(int, args.workers.split(",")):
                    compare(f"analysis  {w} worker process(es)", "jobs/min", lambda tag, root: analysis_rate(
                        work, f"a-{tag}-{w}", db.url(db.create_database()), files, args.studies, w,
                        data_root=root), work, mnt)
            server.log_level("DEBUG3")   # counts the SFTP requests of the costs pass
            with sshfs(server, export, work / "mnt-costs") as mnt:
                for line in costs(work, mnt, server, db.url(db.create_database()), files, args.studies):
                    print(f"costs     {line}", flush=True)
    finally:
        db.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
