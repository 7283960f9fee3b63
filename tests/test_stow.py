"""DICOMweb out: the outbox over STOW-RS to a real Orthanc with its DICOMweb plugin, each instance
confirmed by QIDO-RS. Faults come from a small loopback HTTP proxy in front of Orthanc (503, a 409
with a Failed SOP Sequence, a 200 that stores nothing, a bearer-token check, the TLS end), from
Orthanc itself (its RegisteredUsers) or from nothing listening (connection refused); no mocks.

Cost: about 30 s on 2 busy cores for the module: two Orthancs (plain, and with users behind
HTTPS), one `hccnode send`, one `hccnode outbox` and one `hccnode serve`; the rest in-process.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from conftest import ORTHANC_PYTHON_PLUGIN, Orthanc, free_port, in_ci, need, wait_until
from dicomgen import ct_series
from node_support import make_pki

from hccnode import config
from hccnode.config import ConfigError, DicomWebOptions, ForwardSection
from hccnode.net.forward import drain_once
from hccnode.store import outbox
from hccnode.store.db import Store

pytestmark = pytest.mark.network

DICOMWEB_PLUGIN = ORTHANC_PYTHON_PLUGIN.parent / "libOrthancDicomWeb.so"
DICOMWEB = {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
USER, PASSWORD = "hcc", "s3cret-Orthanc-pw"


def _need_plugin() -> None:
    need("Orthanc")
    if not DICOMWEB_PLUGIN.exists():
        msg = f"{DICOMWEB_PLUGIN} is missing (Debian package orthanc-dicomweb; make test installs it)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    _need_plugin()
    o = Orthanc(tmp_path_factory.mktemp("orthanc"), DICOMWEB).start()
    yield o
    o.stop()


class UsersOrthanc(Orthanc):
    """Orthanc with a registered user (RegisteredUsers); the fixture's own probes authenticate."""

    def get(self, path: str):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", headers={
            "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def secure_pacs(tmp_path_factory):
    """HTTPS in front of an Orthanc with RegisteredUsers. The TLS end is the test's proxy (a Python
    TLS server with a certificate for 127.0.0.1 from a test CA): Debian's Orthanc 1.10.1 dies
    (SIGSEGV) on its first HTTPS connection with SslEnabled, seen here with curl too."""
    _need_plugin()
    root = tmp_path_factory.mktemp("secure")
    (root / "pki").mkdir()
    (root / "orthanc").mkdir()
    pki = make_pki(root / "pki")
    o = UsersOrthanc(root / "orthanc", {**DICOMWEB, "AuthenticationEnabled": True,
                                         "RegisteredUsers": {USER: PASSWORD}}).start()
    front = Proxy(o, tls=(pki / "server.crt", pki / "server.key"))
    front.pki = pki
    yield front
    front.close()
    o.stop()


class Proxy(ThreadingHTTPServer):
    """Loopback HTTP proxy in front of Orthanc. Each STOW-RS POST takes the next behaviour from
    `plan` ("pass" when empty): "pass", "503", "swallow" (answer 200 claiming every instance, send
    nothing), "409" (pass, then delete `victim` from Orthanc and answer 409 listing it as failed
    with 0xA700). GETs (QIDO-RS) pass. With `token`, any request without that bearer token gets 401
    (and is not passed on); without it, the client's Authorization goes to Orthanc. With `tls`
    (certificate, key) it serves HTTPS."""

    daemon_threads = True

    def __init__(self, upstream: Orthanc, port: int = 0, token: str | None = None, tls: tuple | None = None):
        super().__init__(("127.0.0.1", port), _Handler)
        self.upstream, self.token, self.scheme = upstream, token, "https" if tls else "http"
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*map(str, tls))
            self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.plan: list[str] = []
        self.victim = ""
        self.requests: list[tuple[str, str]] = []   # (method, path)
        self.chunked_posts = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}/dicom-web"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: Proxy

    def log_message(self, *args) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.server.chunked_posts += 1
            out = BytesIO()
            while (size := int(self.rfile.readline().split(b";")[0], 16)):
                out.write(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return out.getvalue()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _answer(self, code: int, body: bytes = b"", ctype: str = "application/dicom+json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _upstream(self, body: bytes | None) -> tuple[int, bytes, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream.http_port, timeout=30)
        passed = ("content-type", "accept") + (() if self.server.token else ("authorization",))
        headers = {k: v for k, v in self.headers.items() if k.lower() in passed}
        conn.request(self.command, self.path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, data, r.getheader("Content-Type", "application/dicom+json")

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path))
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self._answer(401, b"")
        self._answer(*self._upstream(None))

    def do_POST(self) -> None:
        body = self._body()
        self.server.requests.append(("POST", self.path))
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self._answer(401, b"")
        mode = self.server.plan.pop(0) if self.server.plan else "pass"
        if mode == "503":
            return self._answer(503, b"busy", "text/plain")
        if mode == "swallow":
            refs = [{"00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                     "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}} for ds in _parts(self.headers, body)]
            return self._answer(200, json.dumps({"00081199": {"vr": "SQ", "Value": refs}}).encode())
        code, data, ctype = self._upstream(body)
        if mode == "409":
            o = self.server.upstream
            for oid in o.post("/tools/lookup", self.server.victim):
                if oid["Type"] == "Instance":
                    http_delete(o, f"/instances/{oid['ID']}")
            answer = json.loads(data)
            kept = [r for r in answer["00081199"]["Value"] if r["00081155"]["Value"] != [self.server.victim]]
            gone = [r for r in answer["00081199"]["Value"] if r["00081155"]["Value"] == [self.server.victim]]
            answer["00081199"]["Value"] = kept
            answer["00081198"] = {"vr": "SQ", "Value": [{"00081150": g["00081150"], "00081155": g["00081155"],
                                                         "00081197": {"vr": "US", "Value": [0xA700]}} for g in gone]}
            return self._answer(409, json.dumps(answer).encode())
        self._answer(code, data, ctype)


def http_delete(o: Orthanc, path: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", o.http_port, timeout=10)
    conn.request("DELETE", path)
    assert conn.getresponse().status == 200
    conn.close()


def _parts(headers, body: bytes) -> list[pydicom.Dataset]:
    """The DICOM parts of a multipart/related STOW-RS body."""
    boundary = headers["Content-Type"].split("boundary=")[1].strip('"').encode()
    out = []
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        payload = part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
        out.append(pydicom.dcmread(BytesIO(payload)))
    return out


@pytest.fixture
def proxy(pacs):
    p = Proxy(pacs)
    yield p
    p.close()


def sop(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def queue(tmp_path: Path, url: str, n: int, seed: int) -> tuple[Store, list[Path]]:
    store = Store(tmp_path / "data")
    files = ct_series(tmp_path / f"in{seed}", n=n, seed=seed)
    for f in files:
        outbox.enqueue(store, url, f)
    return store, files


def rows(store: Store) -> list[dict]:
    return store.query("SELECT * FROM outbox ORDER BY id")


def fwd(url: str, **kw) -> ForwardSection:
    """Retries due at once (retry_base_seconds 0) so a test drains again without waiting."""
    opts = kw.pop("opts", None)
    return ForwardSection(destinations=[url], retry_base_seconds=0.0, dicomweb={url: opts} if opts else {}, **kw)


def in_pacs(o: Orthanc, files: list[Path]) -> set[str]:
    return {sop(f) for f in files} & o.sop_uids()


def test_stow_delivers_and_each_instance_is_confirmed_by_qido(proxy, pacs, tmp_path):
    store, files = queue(tmp_path, proxy.url, 3, seed=1701)
    assert drain_once(store, fwd(proxy.url)) == 3
    assert all(r["state"] == "sent" and r["last_status"] == 0 and r["attempts"] == 1 for r in rows(store))
    assert in_pacs(pacs, files) == {sop(f) for f in files}
    posts = [p for m, p in proxy.requests if m == "POST"]
    qido = [p for m, p in proxy.requests if m == "GET"]
    assert posts == ["/dicom-web/studies"]                         # one STOW-RS request for the three
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert all(any(q.startswith(f"/dicom-web/studies/{study}/instances?") and f"SOPInstanceUID={sop(f)}" in q
                   for q in qido) for f in files)
    events = {r["event"] for r in store.query("SELECT event FROM audit")}
    assert "output.sent" in events


def test_a_request_over_a_megabyte_goes_chunked_and_arrives(proxy, pacs, tmp_path):
    store = Store(tmp_path / "data")                                # an ECV map is several MB
    files = ct_series(tmp_path / "in", n=3, size=512, seed=1709)    # 3 x 512 KB
    for f in files:
        outbox.enqueue(store, proxy.url, f)
    drain_once(store, fwd(proxy.url))
    assert proxy.chunked_posts == 1
    assert all(r["state"] == "sent" for r in rows(store))
    assert in_pacs(pacs, files) == {sop(f) for f in files}


def test_a_200_that_stored_nothing_is_not_marked_sent(proxy, pacs, tmp_path):
    store, files = queue(tmp_path, proxy.url, 2, seed=1702)
    proxy.plan = ["swallow"]
    drain_once(store, fwd(proxy.url))
    assert not in_pacs(pacs, files)
    for r in rows(store):
        assert r["state"] == "pending" and r["last_status"] is None
        assert r["last_error"] == (f"{proxy.url}: STOW-RS answered HTTP 200 but QIDO-RS does not find the instance:"
                                   " not stored")
    drain_once(store, fwd(proxy.url))                              # the retry goes through
    assert all(r["state"] == "sent" and r["attempts"] == 2 for r in rows(store))
    assert in_pacs(pacs, files) == {sop(f) for f in files}


def test_pacs_down_keeps_the_rows_and_they_go_once_it_is_back(pacs, tmp_path):
    port = free_port()                                             # nothing listens there yet
    url = f"http://127.0.0.1:{port}/dicom-web"
    store, files = queue(tmp_path, url, 2, seed=1703)
    drain_once(store, fwd(url))
    for r in rows(store):
        assert r["state"] == "pending" and r["attempts"] == 1
        assert r["last_error"] == f"{url}: STOW-RS: cannot connect: connection refused"
    back = Proxy(pacs, port=port)
    try:
        drain_once(store, fwd(url))
    finally:
        back.close()
    assert all(r["state"] == "sent" and r["attempts"] == 2 for r in rows(store))
    assert in_pacs(pacs, files) == {sop(f) for f in files}


def test_http_503_is_retried_by_the_outbox_not_by_the_client(proxy, pacs, tmp_path):
    store, files = queue(tmp_path, proxy.url, 2, seed=1704)
    proxy.plan = ["503"]
    drain_once(store, fwd(proxy.url))
    assert [m for m, _ in proxy.requests] == ["POST"]              # no hidden retry inside the client
    for r in rows(store):
        assert r["state"] == "pending" and r["last_status"] is None
        assert r["last_error"] == f"{proxy.url}: STOW-RS: HTTP 503 Service Unavailable"
    drain_once(store, fwd(proxy.url))
    assert all(r["state"] == "sent" for r in rows(store))
    assert in_pacs(pacs, files) == {sop(f) for f in files}


def test_409_partial_failure_fails_only_the_refused_instance_retried_then_given_up(proxy, pacs, tmp_path):
    store, files = queue(tmp_path, proxy.url, 2, seed=1705)
    good, bad = files
    proxy.victim = sop(bad)
    proxy.plan = ["409", "409"]
    cfg = fwd(proxy.url, max_attempts=2)
    drain_once(store, cfg)
    first = {r["sop_uid"]: r for r in rows(store)}
    assert first[sop(good)]["state"] == "sent"
    refused = first[sop(bad)]
    assert refused["state"] == "pending" and refused["last_status"] == 0xA700
    assert refused["last_error"] == (f"{proxy.url}: STOW-RS refused the instance (HTTP 409): failure reason 0xA700"
                                     " (refused: out of resources)")
    assert in_pacs(pacs, files) == {sop(good)}
    drain_once(store, cfg)                                         # second attempt of max_attempts = 2
    assert {r["sop_uid"]: r["state"] for r in rows(store)}[sop(bad)] == "failed"
    assert outbox.retry_failed(store) == 1                         # `hccnode outbox --retry-failed`
    drain_once(store, cfg)
    assert all(r["state"] == "sent" for r in rows(store))
    assert in_pacs(pacs, files) == {sop(f) for f in files}


def test_https_verified_and_a_wrong_password_is_a_clear_error_and_the_row_stays(secure_pacs, tmp_path, caplog):
    url = secure_pacs.url
    wrong, right = tmp_path / "wrong", tmp_path / "right"
    wrong.write_text(f"{USER}:not-the-password\n")
    right.write_text(f"{USER}:{PASSWORD}\n")
    store, files = queue(tmp_path, url, 1, seed=1706)

    drain_once(store, fwd(url, opts=DicomWebOptions(basic_auth_file=str(right))))     # no CA: not trusted
    (r,) = rows(store)
    assert r["state"] == "pending" and r["last_error"].startswith(f"{url}: STOW-RS: TLS failed: certificate verify failed")

    ca = str(secure_pacs.pki / "ca.crt")
    drain_once(store, fwd(url, opts=DicomWebOptions(ca_bundle=ca, basic_auth_file=str(wrong))))
    (r,) = rows(store)
    assert r["state"] == "pending" and r["attempts"] == 2
    assert r["last_error"] == (f"{url}: STOW-RS: HTTP 401 Unauthorized: the server refused the user:password"
                               f" of basic_auth_file {wrong}")
    drain_once(store, fwd(url, opts=DicomWebOptions(ca_bundle=ca, basic_auth_file=str(right))))
    assert rows(store)[0]["state"] == "sent"
    assert secure_pacs.upstream.sop_uids() == {sop(files[0])}
    audit = json.dumps(store.query("SELECT * FROM audit"))
    for secret in (PASSWORD, "not-the-password"):
        assert secret not in audit and secret not in caplog.text


def test_send_cli_with_a_wrong_bearer_token_names_the_error_and_serve_retries_with_the_new_one(node_factory, pacs, tmp_path):
    proxy = Proxy(pacs, token="the-right-token")
    try:
        token = tmp_path / "token"
        token.write_text("a-wrong-token\n")
        node = node_factory(forward={"destinations": [proxy.url]})
        with open(node.config_path, "a") as cfg_file:
            cfg_file.write(f'[forward.dicomweb."{proxy.url}"]\ntoken_file = "{token}"\n')
        f = ct_series(tmp_path / "in", n=1, seed=1707)[0]
        r = node.cli("send", str(f), "--to", proxy.url)
        assert r.returncode == 1
        assert (f"{proxy.url}: STOW-RS: HTTP 401 Unauthorized: the server refused the bearer token of"
                f" token_file {token}") in r.stderr
        listing = node.cli("outbox")
        assert "HTTP 401 Unauthorized" in listing.stdout and "pending" in listing.stdout
        assert not any("a-wrong-token" in t for t in (r.stdout, r.stderr, listing.stdout, node.log()))
        assert "Traceback" not in r.stderr
        assert rows(node.store())[0]["state"] == "pending"

        token.write_text("the-right-token\n")                      # read again at the next send
        node.start()                                               # the serving node's forwarder retries
        store = node.store()
        wait_until(lambda: rows(store)[0]["state"] == "sent", 30, what="the retry with the corrected token")
        node.stop()
        assert "a-wrong-token" not in node.log() and "the-right-token" not in node.log()
        assert sop(f) in pacs.sop_uids()
    finally:
        proxy.close()


@pytest.mark.parametrize("code, meaning", [
    (0xA700, "refused: out of resources"), (0xA7FF, "refused: out of resources"),
    (0xA912, "error: data set does not match SOP class"), (0xC122, "referenced transfer syntax not supported"),
    (0xC123, "error: cannot understand"), (0x0110, "processing failure"),
    (0x0122, "referenced SOP class not supported"), (0x1234, "not defined in PS3.18 Table I.2-2"),
])
def test_failure_reasons_read_as_ps3_18_table_i_2_2(code, meaning):
    from hccnode.net.stow import failure_meaning
    assert failure_meaning(code) == meaning


def test_an_unreadable_token_file_is_named_and_the_row_stays(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    store, _ = queue(tmp_path, url, 1, seed=1708)
    gone = tmp_path / "gone.token"
    drain_once(store, fwd(url, opts=DicomWebOptions(token_file=str(gone))))
    (r,) = rows(store)
    assert r["state"] == "pending"
    assert r["last_error"] == f"{url}: STOW-RS: token_file {gone}: cannot be read (No such file or directory)"


@pytest.mark.parametrize("text, message", [
    ('[forward]\ndestinations = ["https://u:p@pacs.example.org/dicom-web"]\n', "must not hold credentials"),
    ('[forward]\ndestinations = ["https://pacs.example.org/dicom-web?token=x"]\n', "no query or fragment"),
    ('[forward]\ndestinations = ["ftp://pacs.example.org/"]\n', "forward.destinations[0]"),
    ('[forward]\ndestinations = []\n[forward.dicomweb."https://pacs.example.org/dicom-web"]\n', "not one of forward.destinations"),
    ('[forward]\ndestinations = ["http://pacs.example.org/dicom-web"]\n'
     '[forward.dicomweb."http://pacs.example.org/dicom-web"]\ntoken_file = "{f}"\n', "in the clear; use https"),
    ('[forward]\ndestinations = ["https://pacs.example.org/dicom-web"]\n'
     '[forward.dicomweb."https://pacs.example.org/dicom-web"]\ntoken_file = "{f}"\nbasic_auth_file = "{f}"\n',
     "exclude each other"),
    ('[forward]\ndestinations = ["https://pacs.example.org/dicom-web"]\n'
     '[forward.dicomweb."https://pacs.example.org/dicom-web"]\ntoken_file = "/nonexistent/token"\n',
     "is not a readable file"),
    ('[forward]\ndestinations = ["https://pacs.example.org/dicom-web"]\n'
     '[forward.dicomweb."https://pacs.example.org/dicom-web"]\ntoken = "abc"\n', "unknown key"),
    ('[forward]\ndestinations = ["https://pacs.example.org/dicom-web"]\n[priors]\nenabled = true\n',
     "priors.pacs: required"),
])
def test_dicomweb_configuration_errors_are_named(tmp_path, text, message):
    secret = tmp_path / "secret"
    secret.write_text("x\n")
    path = tmp_path / "hccnode.toml"
    path.write_text(text.replace("{f}", str(secret)))
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert message in str(err.value) and "u:p@" not in str(err.value)


def test_dicomweb_options_are_found_by_url_and_priors_skip_the_url(tmp_path):
    from hccnode.net.priors import pacs_destination
    token = tmp_path / "token"
    token.write_text("t\n")
    path = tmp_path / "hccnode.toml"
    path.write_text('[forward]\ndestinations = ["https://pacs.example.org/dicom-web/", "PACS@10.1.2.3:104"]\n'
                    f'[forward.dicomweb."https://pacs.example.org/dicom-web/"]\ntoken_file = "{token}"\ntimeout = 5\n')
    cfg = config.load(path)
    assert cfg.forward.dicomweb_options("https://pacs.example.org/dicom-web").token_file == str(token)
    assert cfg.forward.dicomweb_options("https://other.example.org/dicom-web") == DicomWebOptions()
    assert str(pacs_destination(cfg)) == "PACS@10.1.2.3:104"
