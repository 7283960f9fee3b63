"""The status HTTP server: standard library ThreadingHTTPServer in a thread of `hccnode serve`.

Routes (GET and HEAD only; any other method gets 405):
  /            the HTML page (hccnode.status.page)
  /health      {"status": "ok" | "degraded", "reasons": [...], "version", "uptime_seconds", ...}
  /api/status  everything the page shows, as JSON (hccnode.status.snapshot.collect)

Each request opens its own read-only connection to the database, so the page can never
change the node's state nor hold a lock a writer waits for. /health answers 200 for ok and
degraded (the node is serving; the reasons say what needs a look) and 503 with status
"error" only when the database cannot be read. Requests naming a Host other than the bound
address or a loopback name are refused (421), which stops DNS-rebinding pages in a local
browser from reading the status (a request without Host cannot come from a browser); with
`allow_remote` any Host is accepted.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from hccnode import __version__, log
from hccnode.config import Config, is_loopback_host
from hccnode.status import page, snapshot
from hccnode.store.db import Store

ALLOW = "GET, HEAD"
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # No scripts, no external anything; the inline style sheet is the only resource.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none';"
                               " base-uri 'none'; form-action 'none'",
}


class StatusServer:
    """`start()` binds and serves in a daemon thread; `stop()` shuts it down."""

    def __init__(self, cfg: Config, started_at: float | None = None):
        self.cfg = cfg
        self.started_at = time.time() if started_at is None else started_at
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self._server.server_address[1] if self._server else None

    def start(self) -> bool:
        """Bind and serve; False (logged as an error) when the address cannot be bound. The page is
        for people watching the node, so a taken port must not stop it from serving DICOM."""
        status = self

        class Handler(_Handler):
            server_status = status

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        host = self.cfg.status.host.strip("[]")
        if not self.cfg.status.allow_remote and not is_loopback_host(host):  # also checked at config load
            raise ValueError(f"status.host: {host!r} is not a loopback address and status.allow_remote is false")
        if ":" in host:
            Server.address_family = socket.AF_INET6
        try:
            self._server = Server((host, self.cfg.status.port), Handler)
        except OSError as exc:
            log.event("status.unavailable", level=logging.ERROR, host=host, port=self.cfg.status.port,
                      error=f"{type(exc).__name__}: {exc.strerror or exc}")
            return False
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="status-http", daemon=True)
        self._thread.start()
        log.event("status.listening", host=host, port=self.port)
        return True

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            log.event("status.stopped")

    def snapshot(self) -> dict:
        store = Store.of(self.cfg, read_only=True)
        try:
            return snapshot.collect(store, self.cfg, self.started_at)
        finally:
            store.close()

    def host_allowed(self, host_header: str | None) -> bool:
        if self.cfg.status.allow_remote:
            return True
        if not host_header:
            return True  # browsers always send Host; only they can be led here by a rebinding DNS name
        name = urlsplit(f"//{host_header}").hostname or ""
        return is_loopback_host(name) or name == self.cfg.status.host.strip("[]").lower()


class _Handler(BaseHTTPRequestHandler):
    server_status: StatusServer
    server_version = "hccnode-status"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 10  # a silent client does not keep a thread

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def __getattr__(self, name: str):
        # Every other method (POST, PUT, DELETE, OPTIONS, made-up ones): 405, not 501.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
                   b"read-only: only GET and HEAD\n", True, {"Allow": ALLOW})

    def _respond(self, body: bool) -> None:
        if not self.server_status.host_allowed(self.headers.get("Host")):
            self._send(HTTPStatus.MISDIRECTED_REQUEST, "text/plain; charset=utf-8",
                       b"unknown Host; use the node's loopback address\n", body)
            return
        path = urlsplit(self.path).path
        if path not in ("/", "/health", "/api/status"):
            self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n", body)
            return
        try:
            snap = self.server_status.snapshot()
        except Exception as exc:  # unreadable database: say so, keep serving
            log.event("status.unavailable", level=logging.WARNING, error=type(exc).__name__)
            doc = {"status": "error", "reasons": [f"database: cannot read ({type(exc).__name__})"],
                   "version": __version__}
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "application/json", _json(doc), body)
            return
        if path == "/":
            self._send(HTTPStatus.OK, "text/html; charset=utf-8", page.render(snap).encode(), body)
        elif path == "/health":
            node = snap["node"]
            doc = {**snap["health"], "version": node["version"], "started_at": node["started_at"],
                   "uptime_seconds": node["uptime_seconds"], "generated_at": snap["generated_at"]}
            self._send(HTTPStatus.OK, "application/json", _json(doc), body)
        else:
            self._send(HTTPStatus.OK, "application/json", _json(snap), body)

    def _send(self, status: HTTPStatus, ctype: str, data: bytes, body: bool, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in {**HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass  # requests are logged by log_request below, without query strings

    def log_request(self, code="-", size="-") -> None:
        code = code.value if isinstance(code, HTTPStatus) else code
        log.event("status.request", level=logging.DEBUG, method=self.command,
                  path=urlsplit(self.path or "").path[:100], status=code, peer=self.client_address[0])


def _json(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
