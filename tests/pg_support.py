"""A real PostgreSQL for the tests: `initdb` into a temporary directory and `pg_ctl` on a free
loopback port (TCP only, no Unix socket), one server per session, a fresh database per test.

The server refuses to run as root, so under root `initdb`, `pg_ctl` and the server run as the
`postgres` OS user (Debian's package creates it) on a directory that user owns. Trust
authentication on 127.0.0.1 only, and fsync off: a throwaway test cluster, not a durable one.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

def _pg_bin() -> Path:
    """HCCNODE_PG_BIN, else the newest Debian server in /usr/lib/postgresql/VERSION/bin."""
    if os.environ.get("HCCNODE_PG_BIN"):
        return Path(os.environ["HCCNODE_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
SUPERUSER = "postgres"


def missing() -> str | None:
    """Why no test server can be started here, or None when it can."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).is_file():
            return f"PostgreSQL server binaries not found in {PG_BIN} (make test installs Debian's postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run the server as"
    return None


class PgServer:
    """One throwaway cluster: `start()`, then `create_database()` per test, `stop()` at the end."""

    def __init__(self, port: int):
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="hccnode-pg-"))
        self.data = self.dir / "data"
        self._names = itertools.count(1)
        self._user = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.dir, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self._user is not None:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    def start(self) -> "PgServer":
        r = self._run(PG_BIN / "initdb", "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr[-2000:]}")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        r = self._run(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "server.log", "-o", options,
                      "-w", "-t", "60", "start")
        if r.returncode:
            log = (self.dir / "server.log").read_text(errors="replace")[-2000:] if (self.dir / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed on port {self.port}: {r.stderr[-1000:]} {log}")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as c:
            c.execute(sql)

    def create_database(self) -> str:
        """A new, empty database (from template0); returns its name."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        if self.data.exists():
            self._run(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_server(free_port, attempts: int = 3) -> PgServer:
    """A started server on a free loopback port (another port if the chosen one was taken meanwhile)."""
    error = None
    for _ in range(attempts):
        server = PgServer(free_port())
        try:
            return server.start()
        except RuntimeError as exc:
            error = exc
            server.stop()
    raise RuntimeError(f"no PostgreSQL test server after {attempts} attempts: {error}")
