"""The status page and health endpoint of `hccnode serve`: over HTTP and in a real headless Chromium.

A real node gets a small CT study (dcmtk storescu) and HL7 messages over MLLP; the page and
the JSON must show the study, its stored phase decisions and job state, the lab feed, and
none of the patient's name, ID or birth date.
"""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pydicom
import pytest

from conftest import NodeProcess, free_port, need, wait_until
from dicomgen import PATIENT_ID, PATIENT_NAME, ct_series
from labs_support import ack_fields, obx, oru
from test_node import mllp_send

pytestmark = pytest.mark.network

BIRTH_DATE = "19600101"  # dicomgen's PatientBirthDate, also sent in PID-7
PHI = (PATIENT_ID, PATIENT_NAME, "NETTEST", "SENTINEL", BIRTH_DATE)
DESCRIPTION = 'ABD <script>alert("x")</script> & co'  # markup that must arrive as text


def request(port: int, path: str, method: str = "GET", host: str | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.putrequest(method, path, skip_host=host is not None)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> dict:
    status, headers, body = request(port, path)
    assert status == 200 and headers["content-type"] == "application/json", (status, body[:300])
    return json.loads(body)


def assert_no_phi(text: str) -> None:
    for s in PHI:
        assert s not in text, f"{s!r} appears on the status page"


@pytest.fixture(scope="module")
def fed_node(tmp_path_factory):
    """A node that received one CT study, had its phases decided, and got one good and one bad ORU."""
    d = tmp_path_factory.mktemp("status")
    hl7_port = free_port()
    node = NodeProcess(d, hl7={"enabled": True, "port": hl7_port}).start()
    try:
        files = ct_series(d / "in", n=3, size=32, description=DESCRIPTION)
        sent = subprocess.run([need("storescu"), "-aec", "HCCNODE", "127.0.0.1", str(node.port), *map(str, files)],
                              capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        store = node.store()
        wait_until(lambda: store.query("SELECT 1 FROM jobs WHERE state = 'done'"), 30, what="analysis job")
        from hccnode.imaging.phase_index import classify_and_store
        assert classify_and_store(store, study)  # what `hccnode phases STUDY_UID` stores
        pid = f"PID|1||{PATIENT_ID}^^^HOSP^MR||{PATIENT_NAME}||{BIRTH_DATE}"
        ack = ack_fields(mllp_send(hl7_port, oru(obx(1, "4544-3", "41", "%", time="20260101070000"),
                                                 pid=pid, control="GOOD1")))
        assert ack["code"] == "AA"
        ack = ack_fields(mllp_send(hl7_port, "PID|1||" + PATIENT_ID + "\r"))  # no MSH: rejected
        assert ack["code"] == "AR"
        yield node, study, store
    finally:
        node.stop()


def test_health_and_status_json_show_study_phases_job_and_lab_feed(fed_node):
    from hccnode import __version__
    from hccnode.store.phases import stored_phases

    node, study, store = fed_node
    health = get_json(node.status_port, "/health")
    assert health["status"] == "ok" and health["reasons"] == []
    assert health["version"] == __version__ and health["uptime_seconds"] > 0

    snap = get_json(node.status_port, "/api/status")
    (s,) = [x for x in snap["studies"] if x["study_uid"] == study]
    assert s["job"]["state"] == "done" and s["instances"] == 3 and s["study_date"] == "20260101"
    assert [x["series_description"] for x in s["series"]] == [DESCRIPTION]
    truth = stored_phases(store, study)
    assert truth, "phases were decided"
    assert [(p["series_uid"], p["kind"], p["confidence"]) for p in s["phases"]] == \
        [(p["series_uid"], p["kind"], p["confidence"]) for p in truth]
    assert snap["jobs"]["counts"] == {"done": 1}
    labs = snap["labs"]
    assert labs["last_accepted"]["control_id"] == "GOOD1" and labs["last_accepted"]["outcome"] == "AA"
    assert labs["last_rejected"]["outcome"] == "AR" and "MSH" in labs["last_rejected"]["reason"]
    assert labs["last_received"]["outcome"] == "AR"  # the bad one came last
    assert labs["messages_last_24h"] == {"AA": 1, "AR": 1} and labs["results_stored"] == 1
    assert snap["node"]["version"] == __version__ and snap["node"]["dicom_port"] == node.port
    assert snap["ingest"]["instances"] == 3
    for path in ("/health", "/api/status"):
        assert_no_phi(request(node.status_port, path)[2].decode())


def test_html_page_escapes_database_text_and_shows_no_phi(fed_node):
    node, study, _ = fed_node
    status, headers, body = request(node.status_port, "/")
    page = body.decode()
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert f'data-study-uid="{study}"' in page and 'data-state="done"' in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    # No scripts, no external assets.
    assert "<script" not in page.lower() and "src=" not in page and "://" not in page
    assert "default-src 'none'" in headers["content-security-policy"]
    assert_no_phi(page)


def test_only_get_and_head_on_known_paths_from_a_loopback_host(fed_node):
    node, _, _ = fed_node
    port = node.status_port
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"):
        status, headers, _ = request(port, "/", method)
        assert status == 405 and headers["allow"] == "GET, HEAD", method
    status, headers, body = request(port, "/", "HEAD")
    assert status == 200 and int(headers["content-length"]) > 0 and body == b""
    assert request(port, "/nothing-here")[0] == 404
    assert request(port, "/", host="attacker.example:80")[0] == 421   # DNS rebinding
    assert request(port, "/health", host=f"localhost:{port}")[0] == 200
    # The node still serves DICOM after all that.
    assert node.echo_ok()


class _Dom(HTMLParser):
    """Elements of a dumped DOM: (tag, attributes, text directly inside)."""

    def __init__(self):
        super().__init__()
        self.elements: list[list] = []
        self._open: list[list] = []

    def handle_starttag(self, tag, attrs):
        el = [tag, dict(attrs), ""]
        self.elements.append(el)
        if tag not in ("meta", "br", "link", "img", "input"):
            self._open.append(el)

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass

    def handle_data(self, data):
        for el in self._open:
            el[2] += data

    def find(self, tag: str, **attrs) -> list[list]:
        return [e for e in self.elements if e[0] == tag and all(e[1].get(k) == v for k, v in attrs.items())]


def dump_dom(url: str, workdir: Path) -> str:
    chromium = need("chromium")
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={workdir / 'chromium-profile'}", "--dump-dom", url],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-2000:]
    return r.stdout


def test_headless_chromium_renders_the_study_phases_and_job_state(fed_node, tmp_path):
    from hccnode.store.phases import stored_phases

    node, study, store = fed_node
    html = dump_dom(f"http://127.0.0.1:{node.status_port}/", tmp_path)
    dom = _Dom()
    dom.feed(html)
    (row,) = dom.find("tr", **{"class": "study", "data-study-uid": study})
    assert study in row[2] and "2026-01-01 08:00" in row[2]
    assert DESCRIPTION in row[2]              # the markup in it is text, not elements
    assert not dom.find("script")
    (job,) = [e for e in dom.elements if e[1].get("class", "").startswith("job-state")]
    assert job[1]["data-state"] == "done" and job[2] == "done"
    kinds = [e[1]["data-kind"] for e in dom.find("li", **{"class": "phase"})]
    assert kinds == [p["kind"] for p in stored_phases(store, study)]
    (badge,) = dom.find("span", id="health")
    assert badge[2] == "ok"
    (accepted,) = dom.find("td", id="lab-last-accepted")
    assert "ORU^R01" in accepted[2] and "AA" in accepted[2]
    assert_no_phi(html)


def test_health_turns_degraded_for_outbox_failures_and_a_silent_lab_feed(node_factory, tmp_path):
    from hccnode.store import outbox

    closed = free_port()  # nothing listens here: every send fails
    node = node_factory(hl7={"enabled": True, "port": free_port()}, forward={"max_attempts": 1},
                        status={"lab_silent_hours": 0.0005}).start()  # 1.8 s without HL7
    files = ct_series(tmp_path / "out", n=1, size=16)
    assert outbox.enqueue(node.store(), f"PACS@127.0.0.1:{closed}", files[0])  # the node's forwarder tries it
    health = wait_until(lambda: (h := get_json(node.status_port, "/health"))["status"] == "degraded"
                        and len(h["reasons"]) == 2 and h, 20, what="outbox and lab feed reasons")
    assert any(r.startswith("outbox: 1 item(s) failed") for r in health["reasons"])
    assert any(r.startswith("lab feed: no HL7 message") for r in health["reasons"])
    snap = get_json(node.status_port, "/api/status")
    (row,) = snap["outbox"]["failed"]
    assert row["destination"] == f"PACS@127.0.0.1:{closed}" and row["last_error"]
    page = request(node.status_port, "/")[2].decode()
    assert 'data-status="degraded"' in page and f"PACS@127.0.0.1:{closed}" in page


def test_a_failed_analysis_degrades_health_until_a_later_run_succeeds(tmp_path):
    from hccnode import config
    from hccnode.status.snapshot import collect
    from hccnode.store import jobs
    from hccnode.store.db import Store, now

    cfg = config.from_dict({"node": {"data_dir": str(tmp_path)}, "status": {"lab_silent_hours": 1.0}})
    store = Store(cfg.data_dir)
    t = now()
    store.conn().execute("INSERT INTO studies (study_uid, first_received, last_received, seq) VALUES ('1.2.3', ?, ?, 1)",
                         (t, t))
    job = jobs.enqueue(store, "1.2.3", "stable", max_attempts=1)
    assert jobs.claim(store, "w", 10).id == job
    assert jobs.fail(store, job, "w", "RuntimeError: no liver found") == "failed"
    h = collect(store, cfg, started_at=t, now=t + 60)["health"]
    assert h == {"status": "degraded", "reasons": ["jobs: analysis failed for 1 study(ies)"]}

    again = jobs.requeue(store, "1.2.3", "manual")
    assert jobs.claim(store, "w", 10).id == again and jobs.complete(store, again, "w", {})
    assert collect(store, cfg, started_at=t, now=t + 60)["health"] == {"status": "ok", "reasons": []}

    # A send that failed once and waits for its retry is a reason too (the peer is down).
    from hccnode.store import outbox
    outbox.enqueue(store, "PACS@127.0.0.1:104", ct_series(tmp_path / "out", n=1, size=16)[0], study_uid="1.2.3")
    (item,) = outbox.claim_due(store)["PACS@127.0.0.1:104"]
    assert collect(store, cfg, started_at=t, now=t + 60)["health"]["status"] == "ok"  # first attempt under way
    assert outbox.mark_failed(store, item, "connection refused", None, base=5, cap=60, max_attempts=3) == "pending"
    h = collect(store, cfg, started_at=t, now=t + 60)
    assert h["health"]["reasons"] == ["outbox: 1 item(s) waiting to be retried for PACS@127.0.0.1:104"]
    assert h["studies"][0]["outputs"] == {"pending": 1}
    outbox.mark_sent(store, item, 0x0000)  # the retry got through
    assert collect(store, cfg, started_at=t, now=t + 60)["health"]["status"] == "ok"
    # The lab feed counts as silent from start-up when no message came: 1 h allowed.
    assert collect(store, cfg, started_at=t, now=t + 3500)["health"]["status"] == "ok"
    late = collect(store, cfg, started_at=t, now=t + 3700)["health"]
    assert late["status"] == "degraded" and late["reasons"][0].startswith("lab feed: no HL7 message for 1.0 h")
    cfg.hl7.enabled = False  # no listener: nothing to be silent
    assert collect(store, cfg, started_at=t, now=t + 3700)["health"]["status"] == "ok"


def test_status_host_must_be_loopback_unless_allowed():
    from hccnode import config

    for host in ("0.0.0.0", "10.1.2.3", "status.example.org"):
        with pytest.raises(config.ConfigError, match="status.host"):
            config.from_dict({"status": {"host": host}})
    for host in ("127.0.0.1", "127.9.9.9", "::1", "localhost"):
        assert config.from_dict({"status": {"host": host}}).status.host == host
    assert config.from_dict({"status": {"host": "0.0.0.0", "allow_remote": True}}).status.allow_remote


def test_a_taken_status_port_is_logged_and_does_not_raise(tmp_path, caplog):
    from hccnode import config
    from hccnode.status.server import StatusServer

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        cfg = config.from_dict({"node": {"data_dir": str(tmp_path)}, "status": {"port": blocker.getsockname()[1]}})
        server = StatusServer(cfg)
        with caplog.at_level("ERROR", logger="hccnode"):
            assert server.start() is False  # Node.start goes on to serve DICOM
        assert server.port is None and "status.unavailable" in caplog.text
        server.stop()


def test_status_reads_through_a_read_only_connection(tmp_path):
    from hccnode import config
    from hccnode.status.server import StatusServer
    from hccnode.store.db import Store

    cfg = config.from_dict({"node": {"data_dir": str(tmp_path / "data")}, "status": {"port": 0}})
    cfg.status.host = "0.0.0.0"  # changed after validation: the server checks again
    with pytest.raises(ValueError, match="status.host"):
        StatusServer(cfg).start()
    cfg.status.host = "127.0.0.1"
    server = StatusServer(cfg)
    assert server.start()
    try:
        status, _, body = request(server.port, "/health")   # no database yet: 503, still serving
        assert status == 503 and json.loads(body)["status"] == "error"
        Store(cfg.data_dir).close()
        assert get_json(server.port, "/health")["status"] == "ok"
    finally:
        server.stop()
    ro = Store(cfg.data_dir, read_only=True)
    assert ro.query("SELECT COUNT(*) AS n FROM jobs") == [{"n": 0}]
    with pytest.raises(sqlite3.OperationalError):
        ro.conn().execute("DELETE FROM jobs")
    with pytest.raises(FileNotFoundError):
        Store(tmp_path / "elsewhere", read_only=True)
    assert not (tmp_path / "elsewhere").exists()
