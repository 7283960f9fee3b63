"""Shared fixtures: real tools, a real node process, a real Orthanc; loopback only."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

# How long an example takes varies with the machine's load: no per-example deadline and no
# "too slow" health check, project-wide (on top of hypothesis' own CI profile when CI is set).
settings.register_profile("hccnode", parent=settings(), deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("hccnode")

ROOT = Path(__file__).resolve().parent.parent
ORTHANC_PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def need(tool: str) -> str:
    """Path of an external tool; a missing tool fails the suite under CI=true, else skips."""
    path = shutil.which(tool)
    if path:
        return path
    msg = f"required tool {tool!r} is not installed (make test installs it)"
    if in_ci():
        pytest.fail(msg)
    pytest.skip(msg)


# Ports for the peers a test starts come from below the kernel's ephemeral range (32768-60999 by
# default), where neither bind(("", 0)) nor an outgoing connection can take one, and each
# pytest-xdist worker has its own block of that range: a port handed to a test is not handed to a
# test of another worker meanwhile, even before the peer it is for has bound it.
PORT_FLOOR = 10000


def _port_block() -> range:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ceiling = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ceiling = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    size = (ceiling - PORT_FLOOR) // count
    return range(PORT_FLOOR + index * size, PORT_FLOOR + (index + 1) * size)


_PORTS: dict = {}


def free_port() -> int:
    """A loopback port nothing listens on, from this worker's block (see PORT_FLOOR), in turn from a
    random start (so concurrent test sessions rarely meet), skipping ports in use."""
    block = _PORTS.get("block")
    if block is None:
        block = _PORTS["block"] = _port_block()
        _PORTS["next"] = random.randrange(len(block))
    for _ in range(len(block)):
        port = block[_PORTS["next"] % len(block)]
        _PORTS["next"] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue                   # in use, or in TIME_WAIT
            return port
    raise RuntimeError(f"no free port in {block.start}-{block.stop - 1}")


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `predicate` until truthy (returned) or `timeout` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def listening_ports(group: int) -> set[int]:
    """TCP ports on which a process of process group `group` listens, read from /proc.

    A port number that a node does not listen on can be taken by any other test process at once, so
    "nothing answers on that port" is not evidence about the node; the node's own sockets are."""
    inodes = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != group:
                continue
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue                                          # the process ended while being read
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:     # state LISTEN, owned by the group
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class NodeProcess:
    """`hccnode serve` as a real subprocess with its own config and data directory."""

    def __init__(self, workdir: Path, **sections):
        self.workdir = workdir
        self.port = free_port()
        self.status_port = free_port()
        self.data_dir = workdir / "data"
        self.log_path = workdir / "node.log"
        cfg = {
            "node": {"ae_title": "HCCNODE", "host": "127.0.0.1", "port": self.port, "data_dir": str(self.data_dir)},
            "study": {"stable_seconds": 1.0},
            "worker": {"processes": 1, "lease_seconds": 10.0, "poll_seconds": 0.2},
            "forward": {"retry_base_seconds": 0.3, "retry_max_seconds": 2.0, "poll_seconds": 0.2},
            "hl7": {"enabled": False},
            "status": {"port": self.status_port},
        }
        self.cfg = cfg
        self.config_path = workdir / "hccnode.toml"
        self.configure(**sections)
        self.proc: subprocess.Popen | None = None

    def configure(self, **sections) -> "NodeProcess":
        """Change configuration values (read at the next start)."""
        for name, values in sections.items():
            self.cfg.setdefault(name, {}).update(values)
        self.config_path.write_text(_toml(self.cfg))
        return self

    def start(self, wait: bool = True, role: str | None = None) -> "NodeProcess":
        """`hccnode serve` (`--role ROLE` when given); `wait`: until it answers C-ECHO and says
        every part has started (its status page, HL7 listener and workers start after the DICOM
        listener)."""
        readies = self.events().count("node.ready")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "hccnode", "-c", str(self.config_path), "serve",
                                      *(["--role", role] if role else [])],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                     start_new_session=True)
        log.close()
        if wait:
            # A C-ECHO, not a bare TCP probe: pynetdicom keeps a silent connection as an
            # association until its ACSE timeout, and it would count against the limit.
            wait_until(lambda: self.echo_ok() or self.proc.poll() is not None, 30, what="node to answer C-ECHO")
            if self.events_logged("INFO"):
                wait_until(lambda: self.events().count("node.ready") > readies or self.proc.poll() is not None, 30,
                           what="node.ready")
            assert self.proc.poll() is None, f"node exited: {self.log()}"
        return self

    def echo_ok(self) -> bool:
        from hccnode.config import Destination
        from hccnode.net import scu
        try:
            return scu.echo(Destination("HCCNODE", "127.0.0.1", self.port), "TESTPROBE", timeout=2) == 0
        except scu.AssociationFailed as exc:
            return "rejected" in str(exc)   # an allow-list rejection: the node is answering
        except OSError:
            return False

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the worker processes die with it
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> str:
        """The node's events: its [log] file when it has one, else its output."""
        file = self.cfg.get("log", {}).get("file")
        if not file:
            return self.log()
        return Path(file).read_text(errors="replace") if Path(file).exists() else ""

    def events_logged(self, level: str) -> bool:
        """Whether the node's [log] level lets events of `level` through."""
        threshold = str(self.cfg.get("log", {}).get("level", "INFO")).upper()
        return logging.getLevelName(level) >= logging.getLevelName(threshold)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hccnode", "-c", str(self.config_path), *args],
                              capture_output=True, text=True, timeout=timeout, cwd=self.workdir)

    def store(self):
        from hccnode.store.db import Store
        return Store(self.data_dir, url=self.cfg.get("store", {}).get("url", ""))


def _toml(cfg: dict) -> str:
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the whole session (tests/pg_support.py); a skip saying why when there
    is none here, a failure under CI=true."""
    import pg_support

    why = pg_support.missing()
    if why:
        if in_ci():
            pytest.fail(why)
        pytest.skip(why)
    server = pg_support.start_server(free_port)
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """The URL of a fresh, empty database on the session's server, dropped after the test."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """A Store on each engine: the embedded SQLite file, and a fresh PostgreSQL database."""
    from hccnode.store.db import Store

    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    s = Store(tmp_path / "data", url=url)
    yield s
    s.close()


@pytest.fixture
def registration_threads(monkeypatch) -> list[str]:
    """The name of the thread each image registration (hccnode.imaging.registration.register)
    runs in, in order, while the test runs."""
    import threading

    from hccnode.imaging import registration

    names: list[str] = []
    real = registration.register

    def register(*args, **kwargs):
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(registration, "register", register)
    return names


@pytest.fixture
def node_factory(tmp_path):
    nodes: list[NodeProcess] = []

    def make(name: str = "node", **sections) -> NodeProcess:
        d = tmp_path / name
        d.mkdir()
        n = NodeProcess(d, **sections)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


class Orthanc:
    """A real Orthanc with a temporary configuration. Orthanc 1.10 cannot bind to one
    interface, so it is fenced instead: HTTP refuses remote clients and DICOM accepts
    stores only from the registered modality at 127.0.0.1."""

    aet = "ORTHANC"

    def __init__(self, workdir: Path, extra: dict | None = None):
        self.workdir = workdir
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.log_path = workdir / "orthanc.log"
        cfg = {
            "Name": "hccnode-test",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"hccnode": ["HCCNODE", "127.0.0.1", 11112]},
            "Plugins": [],
            "HttpTimeout": 10,
            "StableAge": 2,
        }
        cfg.update(extra or {})
        self.config_path = workdir / "orthanc.json"
        self.config_path.write_text(json.dumps(cfg, indent=1))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Orthanc":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([need("Orthanc"), str(self.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        wait_until(lambda: self._alive() or self.proc.poll() is not None, 60, what="Orthanc to start")
        assert self.proc.poll() is None, f"Orthanc exited: {self.log_path.read_text()[-2000:]}"
        return self

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return port_open(self.dicom_port)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def post(self, path: str, body: str):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=body.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def sop_uids(self) -> set[str]:
        return {self.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in self.get("/instances")}

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"


@pytest.fixture
def orthanc(tmp_path):
    need("Orthanc")
    d = tmp_path / "orthanc"
    d.mkdir()
    o = Orthanc(d).start()
    yield o
    o.stop()


@pytest.fixture
def kill_landed(request):
    """`kill_landed(where)` records where a test's kill -9 landed: in the test's report
    (user_properties), which a section at the end of the run lists (also from xdist workers)."""
    def record(where: str) -> None:
        request.node.user_properties.append(("kill landed", where))
    return record


def pytest_terminal_summary(terminalreporter):
    kills = [(r.nodeid, value) for reports in terminalreporter.stats.values() for r in reports
             if getattr(r, "when", None) == "call"
             for name, value in getattr(r, "user_properties", ()) if name == "kill landed"]
    if kills:
        terminalreporter.section("where each kill -9 landed")
        for nodeid, where in sorted(kills):
            terminalreporter.write_line(f"{nodeid}: {where}")
