"""Who may talk to the node: the AE allow-list with host binding on every DICOM entry point
(C-ECHO, C-STORE, the plain and the TLS listener; C-FIND is not offered), and the MLLP
listener's host allow-list. Real clients over loopback: dcmtk where it can do the job, and a
pynetdicom association bound to 127.0.0.2 as a second host (dcmtk's tools cannot choose their
source address)."""

from __future__ import annotations

import re
import socket
import subprocess

import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelFind, Verification

from conftest import free_port, need
from dicomgen import PATIENT_ID, PATIENT_NAME, ct_series
from hccnode.labs.mllp import frame
from labs_support import ack_fields, obx, oru
from node_support import echoscu, make_pki, sop_of, store_responses, storescu

pytestmark = pytest.mark.network

OTHER_HOST = "127.0.0.2"     # a second loopback address: another host, as far as the node can tell
ALLOWED = ["SCANNER1", "PACS@127.0.0.1", f"WARD@{OTHER_HOST}"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def node(node_factory, pki):
    """A node with an allow-list, listening on its plain port and (mutual) TLS port."""
    tls = {"enabled": True, "port": free_port(), "certificate": str(pki / "server.crt"),
           "private_key": str(pki / "server.key"), "ca_certificates": str(pki / "ca.crt"),
           "require_client_certificate": True}
    n = node_factory(node={"allowed": ALLOWED}, tls=tls).start()
    n.tls_port = tls["port"]
    n.tls_args = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    return n


def rejected(r: subprocess.CompletedProcess) -> bool:
    """dcmtk's words for an A-ASSOCIATE-RJ naming the calling AE title."""
    out = r.stdout + r.stderr
    return r.returncode != 0 and "Association Rejected" in out and "Calling AE Title Not Recognized" in out


def n_instances(node) -> int:
    return node.store().query("SELECT COUNT(*) AS n FROM instances")[0]["n"]


def associate(node, calling: str, context, bind: str):
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling)
    ae.add_requested_context(context, "1.2.840.10008.1.2.1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", node.port, ae_title="HCCNODE", bind_address=(bind, 0))


def test_echo_and_store_from_dcmtk_follow_the_allow_list_on_the_plain_port(node, tmp_path):
    files = ct_series(tmp_path / "in", n=2)
    assert echoscu(node, "SCANNER1").returncode == 0
    assert echoscu(node, "PACS").returncode == 0                      # bound to 127.0.0.1, and that is us
    for aet in ("STRANGER", "WARD", "scanner1"):                      # unknown; wrong host; AE titles are exact
        assert rejected(echoscu(node, aet)), aet
        assert rejected(storescu(node, files, aet=aet)), aet
    assert n_instances(node) == 0
    r = storescu(node, files, aet="SCANNER1")
    assert [a for _, a in store_responses(r.stdout + r.stderr)] == ["Success", "Success"], r.stderr
    assert n_instances(node) == 2


def test_echo_and_store_over_tls_follow_the_same_allow_list(node, tmp_path):
    files = ct_series(tmp_path / "in", n=1)
    assert echoscu(node, "SCANNER1", extra=node.tls_args, port=node.tls_port).returncode == 0
    assert rejected(echoscu(node, "STRANGER", extra=node.tls_args, port=node.tls_port))
    assert rejected(storescu(node, files, aet="WARD", extra=node.tls_args, port=node.tls_port))
    assert n_instances(node) == 0
    assert storescu(node, files, aet="PACS", extra=node.tls_args, port=node.tls_port).returncode == 0
    assert n_instances(node) == 1


def test_host_binding_from_a_second_address(node, tmp_path):
    f = ct_series(tmp_path / "in", n=3)
    ward = associate(node, "WARD", CTImageStorage, OTHER_HOST)        # WARD, from its own host
    assert ward.is_established
    assert ward.send_c_store(f[0]).Status == 0
    ward.release()
    anywhere = associate(node, "SCANNER1", Verification, OTHER_HOST)  # no host given: any host
    assert anywhere.is_established and anywhere.send_c_echo().Status == 0
    anywhere.release()
    for calling, context in (("PACS", CTImageStorage), ("PACS", Verification), ("STRANGER", CTImageStorage)):
        a = associate(node, calling, context, OTHER_HOST)             # PACS is bound to 127.0.0.1
        assert a.is_rejected, calling
        rj = a.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)   # permanent, user, calling AE
    assert [r["sop_uid"] for r in node.store().query("SELECT sop_uid FROM instances")] == [sop_of(f[0])]

    log = node.log()
    assert re.search(rf"association\.rejected calling_ae=PACS peer={re.escape(OTHER_HOST)} ", log)
    assert re.search(rf"association\.accepted calling_ae=WARD peer={re.escape(OTHER_HOST)} ", log)
    audit = node.store().query("SELECT actor, details FROM audit WHERE event = 'association.rejected'")
    assert any(r["actor"] == "AE:PACS" and OTHER_HOST in r["details"] for r in audit)


def test_c_find_is_not_offered_and_a_stranger_is_rejected_before_asking(node):
    need("findscu")
    query = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=*"]
    r = subprocess.run([need("findscu"), "-aet", "SCANNER1", "-aec", "HCCNODE", *query, "127.0.0.1", str(node.port)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "No Acceptable Presentation Contexts" in r.stdout + r.stderr, r.stdout + r.stderr
    r = subprocess.run([need("findscu"), "-aet", "STRANGER", "-aec", "HCCNODE", *query, "127.0.0.1", str(node.port)],
                       capture_output=True, text=True, timeout=30)
    assert rejected(r)
    a = associate(node, "WARD", StudyRootQueryRetrieveInformationModelFind, OTHER_HOST)
    assert not a.is_established or not a.accepted_contexts
    if a.is_established:
        a.release()


# --- MLLP ---------------------------------------------------------------------------------------


def mllp_from(source: str, port: int, message: str) -> tuple[bytes, str]:
    """Send one framed message from `source`; returns what came back and how the connection ended."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        try:
            s.sendall(frame(message))
        except OSError:
            pass
        data = b""
        try:
            while not data.endswith(b"\x1c\r"):
                chunk = s.recv(65536)
                if not chunk:
                    return data, "closed"
                data += chunk
        except ConnectionResetError:
            return data, "reset"
        return data, "answered"


def test_mllp_listener_serves_allowed_hosts_only(node_factory):
    hl7_port = free_port()
    node = node_factory(hl7={"enabled": True, "port": hl7_port, "allowed_hosts": ["127.0.0.1"]}).start()
    message = oru(obx(1, "4544-3", "41", "%", time="20240105080000"), control="SEC1",
                  pid=f"PID|1||{PATIENT_ID}^^^HOSP^MR||{PATIENT_NAME}")

    data, how = mllp_from(OTHER_HOST, hl7_port, message)
    assert (data, how) == (b"", "closed")                  # a clean close: no ACK, no reset
    store = node.store()
    assert store.query("SELECT COUNT(*) AS n FROM labs_raw")[0]["n"] == 0   # not even read

    data, how = mllp_from("127.0.0.1", hl7_port, message)
    assert how == "answered" and ack_fields(data)["code"] == "AA"
    assert store.query("SELECT COUNT(*) AS n FROM labs")[0]["n"] == 1

    log = node.log()
    assert re.search(rf"hl7\.refused peer={re.escape(OTHER_HOST)}:\d+ reason=\"not in hl7.allowed_hosts\"", log)
    assert PATIENT_ID not in log and PATIENT_NAME.split("^")[0] not in log
    audit = store.query("SELECT actor, details FROM audit WHERE event = 'hl7.refused'")
    assert len(audit) == 1 and OTHER_HOST in audit[0]["details"]
