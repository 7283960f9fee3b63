"""DICOM over TLS: dcmtk clients against the node, and the forwarder against dcmtk's storescp."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import free_port, listening_ports, need, port_open, wait_until
from dicomgen import ct_series
from node_support import make_pki

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_node(node_factory, pki, **tls_extra):
    tls = {"enabled": True, "port": free_port(), "certificate": str(pki / "server.crt"),
           "private_key": str(pki / "server.key"), "ca_certificates": str(pki / "ca.crt"),
           "require_client_certificate": True, **tls_extra}
    return node_factory(tls=tls).start(), tls["port"]


def dcmtk_tls(tool: str, port: int, pki: Path, *files, client_cert=True) -> subprocess.CompletedProcess:
    creds = ["+tls", str(pki / "client.key"), str(pki / "client.crt")] if client_cert else ["+tla"]
    return subprocess.run([need(tool), *creds, "+cf", str(pki / "ca.crt"), "-aec", "HCCNODE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=60)


def test_dcmtk_echo_and_store_over_mutual_tls(node_factory, pki, tmp_path):
    node, port = tls_node(node_factory, pki)
    assert dcmtk_tls("echoscu", port, pki).returncode == 0
    files = ct_series(tmp_path / "in", n=3)
    r = dcmtk_tls("storescu", port, pki, *files)
    assert r.returncode == 0, r.stderr
    assert node.store().query("SELECT COUNT(*) AS n FROM instances")[0]["n"] == 3
    assert "tls=True" in node.log()


def test_tls_port_refuses_clients_without_certificate_or_without_tls(node_factory, pki):
    node, port = tls_node(node_factory, pki)
    assert dcmtk_tls("echoscu", port, pki, client_cert=False).returncode != 0        # no client certificate
    plain = subprocess.run([need("echoscu"), "-to", "5", "-ta", "5", "-aec", "HCCNODE", "127.0.0.1", str(port)],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0                                                     # not TLS at all
    assert dcmtk_tls("echoscu", port, pki).returncode == 0                           # still serving


def test_tls_only_node_does_not_open_the_plain_port(node_factory, pki):
    tls = {"enabled": True, "port": free_port(), "certificate": str(pki / "server.crt"),
           "private_key": str(pki / "server.key"), "keep_plain_listener": False}
    node = node_factory(tls=tls)
    node.start(wait=False)
    wait_until(lambda: "node.ready" in node.log(), 30, what="node ready")
    assert port_open(tls["port"]) and node.port not in listening_ports(node.proc.pid)
    assert tls["port"] in listening_ports(node.proc.pid)


def test_forwarder_sends_over_tls_to_dcmtk_storescp(node_factory, pki, tmp_path):
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    peer = subprocess.Popen([need("storescp"), "+tls", str(pki / "server.key"), str(pki / "server.crt"),
                             "+cf", str(pki / "ca.crt"), "-rc", "-od", str(out), "-aet", "PEER", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: port_open(port), 20, what="storescp +tls")
        node = node_factory(forward={"tls": True},
                            tls={"certificate": str(pki / "client.crt"), "private_key": str(pki / "client.key"),
                                 "ca_certificates": str(pki / "ca.crt")})
        files = ct_series(tmp_path / "in", n=2)
        r = node.cli("send", *map(str, files), "--to", f"PEER@127.0.0.1:{port}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert len(list(out.iterdir())) == 2

        untrusted = node_factory("untrusted", forward={"tls": True},
                                 tls={"ca_certificates": str(pki / "client.crt")})  # not the CA that signed the peer
        r = untrusted.cli("send", str(files[0]), "--to", f"PEER@127.0.0.1:{port}")
        assert r.returncode == 1 and "stay in the outbox" in r.stdout
    finally:
        peer.terminate()
        peer.wait(10)
