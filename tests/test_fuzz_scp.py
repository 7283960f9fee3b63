"""1,000 malformed datasets and association attempts: each gets a status or a clean close,
the node never dies, and a valid study sent afterwards is stored and analysed."""

from __future__ import annotations

import random
import socket
import struct
import subprocess

import pydicom
import pytest
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from conftest import need, wait_until
from dicomgen import ct_series

pytestmark = pytest.mark.network

N_DATASETS, N_ASSOCIATIONS = 250, 250
# A hang guard, not a measure: longer than the node's own network timeout (60 s), so only a node
# that never answers or closes reaches it, however loaded the machine.
HANG_GUARD_SECONDS = 120


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One of the faults a broken sender or a damaged file produces."""
    kind = rng.randrange(6)
    header = min(len(data), 700)
    if kind == 0:                                        # truncated anywhere
        return data[:rng.randrange(len(data))]
    if kind == 1:                                        # random bytes in the header
        b = bytearray(data)
        for _ in range(rng.randrange(1, 16)):
            b[rng.randrange(header)] = rng.randrange(256)
        return bytes(b)
    if kind == 2:                                        # an element length blown up
        b = bytearray(data)
        pos = rng.randrange(8, header - 4)
        b[pos:pos + 4] = struct.pack("<I", rng.choice([0xFFFFFFF0, 0x7FFFFFFF, len(data) * 3]))
        return bytes(b)
    if kind == 3:                                        # bad VR characters
        b = bytearray(data)
        pos = rng.randrange(4, header - 2)
        b[pos:pos + 2] = bytes(rng.choice([b"ZZ", b"\x00\x00", b"S?", b"UN"]))
        return bytes(b)
    if kind == 4:                                        # garbage inserted
        pos = rng.randrange(header)
        return data[:pos] + rng.randbytes(rng.randrange(1, 64)) + data[pos:]
    return rng.randbytes(rng.randrange(0, 2000))         # not DICOM at all


def test_fuzzed_datasets_and_associations_never_kill_the_node(node_factory, tmp_path):
    node = node_factory().start()
    rng = random.Random(20261123)
    good = ct_series(tmp_path / "seed", n=1, size=32)[0]
    meta = pydicom.filereader.read_file_meta_info(good)
    raw = good.read_bytes()
    head, body = raw[:132 + 12 + meta.FileMetaInformationGroupLength], raw[132 + 12 + meta.FileMetaInformationGroupLength:]

    _config.STORE_SEND_CHUNKED_DATASET = True
    answered, closed = 0, 0
    path = tmp_path / "fuzz.dcm"
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = HANG_GUARD_SECONDS
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = None
    for _ in range(N_DATASETS):
        if assoc is None or not assoc.is_established:
            assoc = ae.associate("127.0.0.1", node.port, ae_title="HCCNODE")
            assert assoc.is_established, "the node stopped accepting associations"
        path.write_bytes(head + mutate(body, rng))
        rsp = assoc.send_c_store(path)
        if "Status" in rsp:
            answered += 1
            assert rsp.Status == 0 or rsp.Status in (0xA700, 0xA900, 0xC000), hex(rsp.Status)
            if rsp.Status != 0:
                assert rsp.get("ErrorComment"), "a failure without a reason"
        else:
            closed += 1                                   # aborted cleanly; a new association follows
    if assoc.is_established:
        assoc.release()
    assert answered + closed == N_DATASETS and answered > N_DATASETS // 2

    for attempt in range(N_ASSOCIATIONS):                  # broken association requests on raw sockets
        with socket.create_connection(("127.0.0.1", node.port), timeout=HANG_GUARD_SECONDS) as s:
            kind = rng.randrange(4)
            if kind == 0:
                pdu = rng.randbytes(rng.randrange(1, 300))
            elif kind == 1:                                # A-ASSOCIATE-RQ header with a lying length
                pdu = b"\x01\x00" + struct.pack(">I", rng.randrange(1 << 32)) + rng.randbytes(rng.randrange(80))
            elif kind == 2:                                # unknown PDU type
                pdu = bytes([rng.randrange(8, 256), 0]) + struct.pack(">I", 4) + b"\x00" * 4
            else:                                          # connect and close without a word
                pdu = b""
            try:
                s.sendall(pdu)
                s.shutdown(socket.SHUT_WR)
                while s.recv(4096):
                    pass
            except TimeoutError:
                pytest.fail(f"association attempt {attempt} (kind {kind}): the node neither answered nor closed"
                            f" in {HANG_GUARD_SECONDS} s")
            except OSError:
                pass                                       # a reset is a clean close too
    assert node.proc.poll() is None, "the node died"

    files = ct_series(tmp_path / "valid", n=3, seed=9)
    r = subprocess.run([need("storescu"), "-aec", "HCCNODE", "127.0.0.1", str(node.port), *map(str, files)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    store = node.store()
    wait_until(lambda: store.query("SELECT state FROM jobs WHERE study_uid = ? AND state = 'done'", (study,)), 30,
               what="the valid study analysed")
    assert store.query("SELECT COUNT(*) AS n FROM quarantine")[0]["n"] > 0
